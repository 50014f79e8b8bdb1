"Install as users do: a wheel built from the tree (not an editable install) carries every module and runs from outside the repo."
import os, subprocess, sys, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('wheel')
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp/'dist'), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    whl, = (tmp/'dist').glob('ssm_explore-*.whl')
    site = tmp/'site'
    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site), str(whl)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return whl, site, tmp

def test_the_wheel_holds_every_module_of_the_package(installed):
    whl, _, _ = installed
    names = set(zipfile.ZipFile(whl).namelist())
    src = {p.relative_to(ROOT).as_posix() for p in (ROOT/'ssm_explore').rglob('*.py') if '__pycache__' not in p.parts}
    assert src and src <= names, sorted(src - names)
    assert any(n.endswith('entry_points.txt') for n in names)            # the `ssm-explore` command

def test_the_installed_package_runs_from_outside_the_repository(installed):
    _, site, tmp = installed
    code = '''
import ssm_explore, pathlib, sys, numpy as np
assert pathlib.Path(ssm_explore.__file__).resolve().is_relative_to(pathlib.Path(sys.argv[1]).resolve()), ssm_explore.__file__
from ssm_explore.scan_cpu import cpu_kernel_available, cpu_kernel_status
assert cpu_kernel_available(), cpu_kernel_status()        # the kernel's C++ source travels inside the module
from ssm_explore.explain import METHODS, explain_maps, tiny_nets
assert {'gradcam', 'lrp', 'hidden_attention'} <= set(METHODS)
m = explain_maps(tiny_nets()['vmamba'], (np.random.default_rng(0).random((1, 64, 64, 3)) * 255).astype(np.uint8), 0, 'gradcam')
assert m.shape == (1, 64, 64)
from ssm_explore.cli import main
try: rc = main(['robustness', '--help'])
except SystemExit as e: rc = e.code
assert rc == 0, rc
'''
    env = dict(os.environ, PYTHONPATH=str(site))
    r = subprocess.run([sys.executable, '-c', code, str(site)], cwd=tmp, env=env, capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-3000:])
