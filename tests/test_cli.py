"Console entry point: installed, fast --help, JSON info."
import json, subprocess, sys
import pytest

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


def _import_graph():
    "module -> set of ssm_explore modules it imports (top level and inside functions)."
    import ast, pathlib
    root = pathlib.Path(__file__).parent.parent/'ssm_explore'
    mods = {('ssm_explore.' + '.'.join(p.relative_to(root).with_suffix('').parts)).removesuffix('.__init__'): p
            for p in root.rglob('*.py') if p.name != '_modidx.py'}
    graph = {}
    for m, p in mods.items():
        deps, pkg = set(), m if p.name == '__init__.py' else m.rsplit('.', 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import): names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level: base = '.'.join(pkg.split('.')[:len(pkg.split('.')) - node.level + 1] + ([base] if base else []))
                names = [base] + [f'{base}.{a.name}' for a in node.names]
            else: continue
            deps |= {n for n in names if n in mods and n != m}
        graph[m] = deps
    return graph


def test_import_graph_has_no_circle_and_commands_sit_on_top():
    graph = _import_graph()
    state = {}
    def visit(m, path):
        if state.get(m) == 'done': return
        assert state.get(m) != 'open', 'import circle: ' + ' -> '.join(path + [m])
        state[m] = 'open'
        for d in sorted(graph[m]): visit(d, path + [m])
        state[m] = 'done'
    for m in sorted(graph): visit(m, [])
    command_layer = {m for m in graph if m.startswith('ssm_explore.commands') or m == 'ssm_explore.cli'}
    for m in set(graph) - command_layer:
        assert not graph[m] & command_layer, f'library module {m} imports the command layer: {graph[m] & command_layer}'


def test_no_library_module_below_the_command_layer_uses_argparse():
    import pathlib
    root = pathlib.Path(__file__).parent.parent/'ssm_explore'
    import ast
    def imports_argparse(p):
        return any(isinstance(n, (ast.Import, ast.ImportFrom)) and 'argparse' in ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module])
                   for n in ast.walk(ast.parse(p.read_text())))
    users = [p.name for p in root.glob('*.py') if p.name not in ('cli.py', '_modidx.py') and imports_argparse(p)]
    assert users == [], users


@pytest.mark.parametrize('name', sorted(__import__('ssm_explore.cli', fromlist=['BENCHES']).BENCHES))
def test_every_benchmark_and_command_answers_help(name, capsys):
    "`ssm-explore bench NAME --help` runs each benchmark's own imports (a stale import fails here, not only on a full run)."
    from ssm_explore.cli import main
    try: rc = main(['bench', name, '--help'])
    except SystemExit as e: rc = e.code
    assert rc == 0 and 'usage' in capsys.readouterr().out.lower()
