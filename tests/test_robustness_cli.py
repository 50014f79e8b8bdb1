"`ssm-explore robustness` in real (ImageNet) mode, on a tiny generated ImageNet copy with local weight files."
import json, subprocess, sys
from pathlib import Path
import pandas as pd, pytest, timm, torch
from ssm_explore.data import _fake_imagenet

def _cli(*args):
    return subprocess.run([sys.executable, '-m', 'ssm_explore.commands.robustness', *map(str, args)], capture_output=True, text=True, timeout=600)

@pytest.fixture(scope='module')
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp('imagenet')
    _fake_imagenet(root, 'folders', per_class=3, size=(40, 56))
    ck = root/'convnext_atto_random.pth'
    torch.manual_seed(0); torch.save(timm.create_model('convnext_atto').state_dict(), ck)
    return root, ck

def test_real_mode_runs_with_a_local_checkpoint(fake, tmp_path):
    root, ck = fake; out = tmp_path/'run'
    r = _cli('--imagenet', root/'val', '--models', 'convnext_atto', '--checkpoint', f'convnext_atto={ck}',
             '--per-class', 2, '--transforms', 'clean,fliplr,perspective', '--out', out, '--workers', 0, '--batch-size', 4)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((out/'run.json').read_text())
    assert run['models']['convnext_atto']['checkpoint_sha256'] and run['geometry'] == [256, 224]
    acc = pd.read_csv(out/'tables'/'accuracy.csv')
    assert set(acc['transform']) == {'clean', 'fliplr', 'perspective'} and (acc.n == 6).all()
    assert (out/'figures'/'figure2_best_worst.png').stat().st_size > 5000
    # a re-run recomputes nothing and gives the same table
    mt = {p: p.stat().st_mtime_ns for p in out.glob('chunks/*/*.csv')}
    assert _cli('--imagenet', root/'val', '--models', 'convnext_atto', '--checkpoint', f'convnext_atto={ck}', '--per-class', 2,
                '--transforms', 'clean,fliplr,perspective', '--out', out, '--workers', 0).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob('chunks/*/*.csv')} == mt

def test_real_mode_refuses_missing_weights_and_bad_names(fake, tmp_path):
    root, ck = fake
    r = _cli('--imagenet', root/'val', '--models', 'convnext_atto', '--out', tmp_path/'x')
    assert r.returncode != 0 and 'no weights for convnext_atto' in r.stderr
    r = _cli('--imagenet', root/'val', '--models', 'convnext_atto', '--checkpoint', f'convnext_atto={root}/missing.pth')
    assert r.returncode != 0 and 'missing.pth' in r.stderr
    r = _cli('--imagenet', root/'val', '--models', 'convnext_atto', '--allow-random-weights', '--transforms', 'clean,nope', '--out', tmp_path/'y')
    assert r.returncode != 0 and 'nope' in r.stderr
