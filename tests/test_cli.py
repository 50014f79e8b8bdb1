"Console entry point: installed, fast --help, JSON info."
import json, subprocess, sys

def run(*args):
    return subprocess.run(['ssm-explore', *args], capture_output=True, text=True, timeout=120)

def test_help_lists_commands():
    r = run('--help')
    assert r.returncode == 0, r.stderr
    assert 'info' in r.stdout and 'bench' in r.stdout

def test_info_json_reports_backends():
    r = run('info', '--json')
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert set(info['backends']) == {'mamba_ssm', 'causal_conv1d'}
    assert info['packages']['torch']

def test_unknown_command_is_an_error():
    r = run('no-such-command')
    assert r.returncode != 0 and 'no-such-command' in r.stderr

def test_import_is_silent_and_does_not_need_cuda_packages():
    r = subprocess.run([sys.executable, '-c', 'import ssm_explore, ssm_explore.core, ssm_explore.cli'],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == '' and r.stderr == ''
