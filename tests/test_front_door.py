"""The bad-input matrix: files in the formats the official projects publish (made here by `standins`), and data
folders as users have them, driven through the real `ssm-explore` commands. Each case either loads and gives the
right predictions, or ends in one line that names the problem — never a traceback, never code run from a file."""
import io, json, shutil
from pathlib import Path
import numpy as np, pandas as pd, pytest, timm, torch
from PIL import Image
import standins as S
from ssm_explore.cli import main
from ssm_explore.data import _fake_imagenet


def run(capsys, *argv):
    try: rc = main([str(a) for a in argv])
    except SystemExit as e: rc = e.code          # argparse's own exit for a bad flag
    out, err = capsys.readouterr()
    return rc, out, err

def one_line_error(rc, err, *fragments):
    "Exit 2, one line on stderr naming the problem (argparse adds its usage line before its own `error:` line)."
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith(('usage:', ' '))]
    assert rc == 2, (rc, err)
    assert 'Traceback' not in err, err
    assert len(lines) == 1, err
    for f in fragments: assert f in lines[0], (f, lines[0])
    return lines[0]


# -- the models and the data ---------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp('imagenet')
    _fake_imagenet(root, 'folders', per_class=2)
    return root

@pytest.fixture(scope='module')
def vm_sd():
    torch.manual_seed(0)
    return timm.create_model('test_vmamba').state_dict()

def robustness(capsys, imagenet, out, model, ck, *extra):
    args = ['robustness', '--imagenet', imagenet, '--models', model, '--transforms', 'clean', '--per-class', 2,
            '--out', out, '--batch-size', 8]
    if ck is not None: args += ['--checkpoint', f'{model}={ck}']
    return run(capsys, *args, *extra)

def preds(out, model):
    return set(pd.read_csv(Path(out)/'chunks'/model/'clean__s0.csv').pred)


# -- official VMamba checkpoints -----------------------------------------------------------------------------------
def test_official_vmamba_file_uses_model_by_default_and_ema_on_request(capsys, tmp_path, imagenet, vm_sd):
    ck = S.official_vmamba_pth(tmp_path/'vssm.pth', S.favour_class(vm_sd, 5), S.favour_class(vm_sd, 7))
    rc, out, err = run(capsys, 'robustness', '--imagenet', imagenet, '--models', 'test_vmamba', 'convnext_atto',
                       '--checkpoint', f'test_vmamba={ck}', '--allow-random-weights', '--transforms', 'clean,fliplr',
                       '--per-class', 2, '--out', tmp_path/'a', '--batch-size', 8)
    assert rc == 0, err
    assert preds(tmp_path/'a', 'test_vmamba') == {5}                       # 'model', the official evaluation
    info = json.loads((tmp_path/'a'/'run.json').read_text())['models']
    assert info['test_vmamba']['weights'] == 'model' and info['test_vmamba']['ema'] is False
    assert len(info['test_vmamba']['checkpoint_sha256']) == 64 and info['convnext_atto']['checkpoint'] is None
    assert 'paired McNemar tests' in out and 'test_vmamba vs convnext_atto: ' in out   # the README's promise
    rc, out, err = robustness(capsys, imagenet, tmp_path/'b', 'test_vmamba', ck, '--ema')
    assert rc == 0, err
    assert preds(tmp_path/'b', 'test_vmamba') == {7}                       # 'model_ema' only when asked
    assert json.loads((tmp_path/'b'/'run.json').read_text())['models']['test_vmamba']['weights'] == 'model_ema'
    assert (tmp_path/'a'/'tables'/'accuracy.csv').exists() and (tmp_path/'a'/'tables'/'accuracy.md').exists()
    assert (tmp_path/'a'/'run.json').stat().st_mode & 0o044 == 0o044        # readable by group and others

@pytest.mark.parametrize('kind', ['conv_4d_module_prefix', 'bare', 'safetensors'])
def test_official_vmamba_file_variants_load(capsys, tmp_path, imagenet, vm_sd, kind):
    sd = S.favour_class(vm_sd, 3)
    ck = (S.official_vmamba_pth(tmp_path/'v.pth', sd, prefix='module.', conv_4d=True) if kind == 'conv_4d_module_prefix' else
          S.official_vmamba_pth(tmp_path/'v.pth', sd, bare=True) if kind == 'bare' else
          S.weights_file(tmp_path/'model.safetensors', sd))
    rc, out, err = robustness(capsys, imagenet, tmp_path/'r', 'test_vmamba', ck)
    assert rc == 0, err
    assert preds(tmp_path/'r', 'test_vmamba') == {3}

def _drop(sd, *prefixes): return {k: v for k, v in sd.items() if not k.startswith(prefixes)}

@pytest.mark.parametrize('case,fragments', [
    ('wrong_variant', ['v.pth', 'does not fit', 'wrong shape', 'looks like test_vmamba']),
    ('missing_key', ['v.pth', 'missing 1', 'layers.0.blocks.0.op.Ds']),
    ('extra_key', ['v.pth', 'unexpected 1', 'extra.weight']),
    ('no_head', ['2 missing', 'classifier.head']),
    ('head_10_classes', ['classifier.head.weight: file (10, 192) vs model (1000, 192)']),
    ('corrupt', ['v.pth']),
    ('zero_bytes', ['v.pth', 'zero bytes']),
    ('text_file', ['v.pth']),
    ('ema_missing', ['model_ema']),
])
def test_bad_vmamba_files_give_one_line(capsys, tmp_path, imagenet, vm_sd, case, fragments):
    f = tmp_path/'v.pth'; extra = []
    if case == 'wrong_variant': S.official_vmamba_pth(f, timm.create_model('test_vmamba', dims=32).state_dict())
    elif case == 'missing_key': S.official_vmamba_pth(f, {k: v for k, v in vm_sd.items() if k != 'layers.0.blocks.0.op.Ds'})
    elif case == 'extra_key': S.official_vmamba_pth(f, {**vm_sd, 'extra.weight': torch.zeros(2)})
    elif case == 'no_head': S.official_vmamba_pth(f, _drop(vm_sd, 'classifier.head'))
    elif case == 'head_10_classes': S.official_vmamba_pth(f, timm.create_model('test_vmamba', num_classes=10).state_dict())
    elif case == 'corrupt': S.truncated(f, S.official_vmamba_pth(tmp_path/'good.pth', vm_sd))
    elif case == 'zero_bytes': S.zero_bytes(f)
    elif case == 'text_file': S.text_file(f)
    elif case == 'ema_missing': S.official_vmamba_pth(f, vm_sd); extra = ['--ema']
    rc, out, err = robustness(capsys, imagenet, tmp_path/'r', 'test_vmamba', f, *extra)
    one_line_error(rc, err, *fragments)
    assert not (tmp_path/'r'/'chunks').exists()                               # nothing half-written

@pytest.mark.parametrize('how', ['exec', 'system'])
def test_a_checkpoint_with_a_code_payload_is_refused_and_never_runs(capsys, tmp_path, imagenet, how):
    marker = tmp_path/'payload_ran'
    f = S.payload_pth(tmp_path/'v.pth', marker, how)
    rc, out, err = robustness(capsys, imagenet, tmp_path/'r', 'test_vmamba', f)
    line = one_line_error(rc, err, 'v.pth', '--trust-checkpoint')
    assert ('exec' if how == 'exec' else 'system') in line
    assert not marker.exists()


# -- timm weight files ---------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def atto_sd():
    torch.manual_seed(0)
    return S.favour_class(timm.create_model('convnext_atto').state_dict(), 4, head='head.fc')

@pytest.mark.parametrize('name', ['model.safetensors', 'pytorch_model.bin'])
def test_timm_weight_files_load(capsys, tmp_path, imagenet, atto_sd, name):
    ck = S.weights_file(tmp_path/name, atto_sd)
    rc, out, err = robustness(capsys, imagenet, tmp_path/'r', 'convnext_atto', ck)
    assert rc == 0, err
    assert preds(tmp_path/'r', 'convnext_atto') == {4}

def test_a_file_of_another_architecture_is_one_line(capsys, tmp_path, imagenet):
    ck = S.weights_file(tmp_path/'model.safetensors', timm.create_model('resnet18').state_dict())
    rc, out, err = robustness(capsys, imagenet, tmp_path/'r', 'convnext_atto', ck)
    one_line_error(rc, err, 'model.safetensors', 'does not fit convnext_atto', 'missing', 'unexpected')


# -- flags checked before any work -----------------------------------------------------------------------------------
@pytest.mark.parametrize('flags,fragment', [
    (['--per-class', '0'], '--per-class'), (['--per-class', '-1'], '--per-class'),
    (['--severities', '1,9'], '0..5'), (['--transforms', 'clean,nope'], 'nope'),
    (['--batch-size', '0'], '--batch-size'), (['--workers', '-1'], '--workers'),
])
def test_bad_flags_are_refused_at_parse_time(capsys, tmp_path, imagenet, flags, fragment):
    rc, out, err = run(capsys, 'robustness', '--imagenet', imagenet, '--models', 'convnext_atto', '--allow-random-weights',
                       '--out', tmp_path/'r', *flags)
    one_line_error(rc, err, fragment)
    assert not (tmp_path/'r').exists()

def test_checkpoint_names_and_model_names_are_checked(capsys, tmp_path, imagenet, atto_sd):
    ck = S.weights_file(tmp_path/'model.safetensors', atto_sd)
    rc, out, err = run(capsys, 'robustness', '--imagenet', imagenet, '--models', 'convnext_atto', '--checkpoint',
                       f'convnext_tiny={ck}', '--out', tmp_path/'r')
    one_line_error(rc, err, 'convnext_tiny is not among the models')
    rc, out, err = run(capsys, 'robustness', '--imagenet', imagenet, '--models', 'convnext_atoo', '--allow-random-weights',
                       '--out', tmp_path/'r')
    one_line_error(rc, err, "unknown model 'convnext_atoo'", 'convnext_atto')

def test_a_run_resumes_with_the_same_file_by_another_path_and_names_a_real_difference(capsys, tmp_path, imagenet, atto_sd):
    a = S.weights_file(tmp_path/'a'/'model.safetensors', atto_sd)
    rc, out, err = robustness(capsys, imagenet, tmp_path/'r', 'convnext_atto', a)
    assert rc == 0, err
    mt = {p: p.stat().st_mtime_ns for p in (tmp_path/'r').glob('chunks/*/*.csv')}
    b = tmp_path/'copy'/'weights.safetensors'; b.parent.mkdir(); shutil.copy(a, b)
    rc, out, err = robustness(capsys, imagenet, tmp_path/'r', 'convnext_atto', b)
    assert rc == 0, err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path/'r').glob('chunks/*/*.csv')} == mt    # resumed, nothing recomputed
    c = S.weights_file(tmp_path/'c.safetensors', S.favour_class(atto_sd, 1, head='head.fc'))
    rc, out, err = robustness(capsys, imagenet, tmp_path/'r', 'convnext_atto', c)
    one_line_error(rc, err, 'convnext_atto checkpoint_sha256', '--out')


# -- ImageNet folders as users have them -----------------------------------------------------------------------------
def _jpeg(mode, color=128):
    b = io.BytesIO(); Image.new(mode, (40, 30), color if mode != 'RGB' else (color, 20, 200)).save(b, format='JPEG'); return b.getvalue()

def _png():
    b = io.BytesIO(); Image.new('RGB', (40, 30), (10, 200, 30)).save(b, format='PNG'); return b.getvalue()

def one_class(tmp_path, extra:dict, n:int=2):
    root = tmp_path/'in'
    _fake_imagenet(root, 'folders', wnids=('n01440764',), per_class=n,
                   extra={f'val/n01440764/{k}': v for k, v in extra.items()})
    return root

def test_odd_but_valid_image_files_are_read_and_hidden_files_ignored(capsys, tmp_path):
    root = one_class(tmp_path, {'grey.JPEG': _jpeg('L'), 'cmyk.JPEG': _jpeg('CMYK'), 'png_named.JPEG': _png(),
                                'ünïcødé_名前.JPEG': _jpeg('RGB'), '._ILSVRC2012_val_00000001.JPEG': b'\x00\x05\x16\x07apple',
                                '.DS_Store': b'\x00\x00\x00\x01Bud1'})
    rc, out, err = run(capsys, 'robustness', '--imagenet', root, '--models', 'convnext_atto', '--allow-random-weights',
                       '--transforms', 'clean', '--per-class', 6, '--out', tmp_path/'r')
    assert rc == 0, err
    m = pd.read_csv(tmp_path/'r'/'manifest.csv')
    assert len(m) == 6 and not m.path.str.contains('/\\.').any()

def test_unreadable_images_stop_with_one_line_or_are_replaced_from_the_same_class(capsys, tmp_path):
    root = one_class(tmp_path, {'truncated.JPEG': _jpeg('RGB')[:200], 'empty.JPEG': b''}, n=6)
    args = ['robustness', '--imagenet', root, '--models', 'convnext_atto', '--allow-random-weights', '--transforms', 'clean']
    rc, out, err = run(capsys, *args, '--per-class', 8, '--out', tmp_path/'a')
    one_line_error(rc, err, '--skip-bad-files')
    with pytest.warns(UserWarning, match='drew replacements'):
        rc, out, err = run(capsys, *args, '--per-class', 6, '--skip-bad-files', '--out', tmp_path/'b')
    assert rc == 0, err
    m = pd.read_csv(tmp_path/'b'/'manifest.csv')
    assert len(m) == 6 and not m.path.str.contains('truncated|empty').any()

def test_a_folder_of_only_unreadable_images_is_one_line(capsys, tmp_path):
    root = tmp_path/'in'; d = root/'val'/'n01440764'; d.mkdir(parents=True)
    (d/'a.JPEG').write_bytes(b''); (d/'b.JPEG').write_bytes(b'not a jpeg')
    rc, out, err = run(capsys, 'robustness', '--imagenet', root, '--models', 'convnext_atto', '--allow-random-weights',
                       '--per-class', 2, '--skip-bad-files', '--out', tmp_path/'r')
    one_line_error(rc, err, 'none of the 2 sampled images could be read')

@pytest.mark.parametrize('layout', ['folders', 'kaggle', 'devkit'])
def test_the_three_imagenet_layouts_run(capsys, tmp_path, layout):
    _fake_imagenet(tmp_path/'in', layout, per_class=2)
    rc, out, err = run(capsys, 'robustness', '--imagenet', tmp_path/'in', '--models', 'convnext_atto', '--allow-random-weights',
                       '--transforms', 'clean', '--per-class', 2, '--out', tmp_path/'r')
    assert rc == 0, err
    assert len(pd.read_csv(tmp_path/'r'/'manifest.csv')) == 6

def test_a_devkit_folder_with_other_file_names_is_refused_naming_them(capsys, tmp_path):
    _fake_imagenet(tmp_path/'in', 'devkit', per_class=2, extra={'val/IMG_0003.JPEG': _jpeg('RGB')})
    rc, out, err = run(capsys, 'robustness', '--imagenet', tmp_path/'in', '--models', 'convnext_atto', '--allow-random-weights',
                       '--out', tmp_path/'r')
    one_line_error(rc, err, 'IMG_0003.JPEG', 'ILSVRC2012_val_')


# -- nnU-Net checkpoint_final.pth and Massachusetts Roads through `ssm-explore finetune` -------------------------------
@pytest.fixture(scope='module')
def roads(tmp_path_factory):
    from ssm_explore.roads import write_synthetic_roads
    return write_synthetic_roads(tmp_path_factory.mktemp('roads'), 'original', dict(train=2, valid=1, test=1), size=1500)

def _plan_net(plans, classes=2):
    from ssm_explore.umamba import umamba_from_plans
    torch.manual_seed(0)
    return umamba_from_plans(plans, '2d', 3, classes, 'bot', True)

def finetune(capsys, out, ck, *extra, roads=None):
    args = ['finetune', '--quick', '--regimes', 'full', '--epochs', 1, '--iters', 1, '--n-train', 2, '--no-progress',
            '--threads', 1, '--out', out, '--pretrained', ck]
    if roads is not None: args += ['--roads', roads]
    return run(capsys, *args, *extra)

@pytest.mark.parametrize('new_style', [True, False])
def test_nnunet_checkpoint_finetunes_with_the_plan_and_its_output_feeds_back(capsys, tmp_path, new_style):
    plans = S.nnunet_plans(new_style)
    ck = S.nnunet_checkpoint_final(tmp_path/'checkpoint_final.pth', _plan_net(plans).state_dict(), plans, new_style=new_style)
    rc, out, err = finetune(capsys, tmp_path/'a', ck)
    assert rc == 0, err
    assert 're-initialised' in out and '.seg_layers.' in out
    assert "'patch': 64" in json.dumps(json.loads((tmp_path/'a'/'results.json').read_text())['config']).replace('"', "'")
    from ssm_explore.checkpoint import read_checkpoint
    trained = read_checkpoint(tmp_path/'a'/'full'/'checkpoint_final.pth')
    assert trained['init_args']['plans'] == plans
    assert sorted(p.name for p in (tmp_path/'a'/'full').glob('*.pth')) == ['checkpoint_best.pth', 'checkpoint_final.pth']
    rc, out, err = finetune(capsys, tmp_path/'b', tmp_path/'a'/'full'/'checkpoint_final.pth')
    assert rc == 0, err

def test_a_three_class_nnunet_checkpoint_loads_with_fresh_heads(capsys, tmp_path):
    plans = S.nnunet_plans()
    ck = S.nnunet_checkpoint_final(tmp_path/'ck.pth', _plan_net(plans, 3).state_dict(), plans)
    rc, out, err = finetune(capsys, tmp_path/'a', ck)
    assert rc == 0, err

@pytest.mark.parametrize('case,fragments', [
    ('renamed_key', ['does not fit', 'missing']), ('reshaped_key', ['does not fit', 'another shape']),
    ('no_init_args', ["no 'init_args'"]), ('corrupt', ['ck.pth']), ('patch', ['--patch 36', '32 or 40']),
])
def test_bad_nnunet_checkpoints_give_one_line(capsys, tmp_path, case, fragments):
    plans = S.nnunet_plans(); sd = _plan_net(plans).state_dict(); extra = []
    k = next(k for k in sd if k.startswith('encoder.stages.1') and k.endswith('conv1.weight'))
    if case == 'renamed_key': sd = {(k.replace('conv1', 'convX') if n == k else n): v for n, v in sd.items()}
    if case == 'reshaped_key': sd = {**sd, k: torch.zeros(*sd[k].shape[:-1], 5)}
    f = S.nnunet_checkpoint_final(tmp_path/'ck.pth', sd, plans)
    if case == 'no_init_args':
        from ssm_explore.checkpoint import read_checkpoint
        d = read_checkpoint(f); del d['init_args']; torch.save(d, f)
    if case == 'corrupt': S.truncated(f, S.nnunet_checkpoint_final(tmp_path/'good.pth', sd, plans))
    if case == 'patch': extra = ['--patch', 36]
    rc, out, err = finetune(capsys, tmp_path/'a', f, *extra)
    one_line_error(rc, err, *fragments)

def test_an_nnunet_checkpoint_with_a_payload_in_init_args_never_runs(capsys, tmp_path):
    marker = tmp_path/'payload_ran'; plans = S.nnunet_plans()
    f = S.nnunet_checkpoint_final(tmp_path/'ck.pth', _plan_net(plans).state_dict(), plans, payload=marker)
    rc, out, err = finetune(capsys, tmp_path/'a', f)
    one_line_error(rc, err, 'ck.pth', '--trust-checkpoint')
    assert not marker.exists()

def test_massachusetts_roads_at_1500_px_and_bad_regimes(capsys, tmp_path, roads):
    plans = S.nnunet_plans()
    ck = S.nnunet_checkpoint_final(tmp_path/'ck.pth', _plan_net(plans).state_dict(), plans)
    rc, out, err = finetune(capsys, tmp_path/'a', ck, roads=roads)
    assert rc == 0, err
    assert 'Massachusetts Roads' in json.loads((tmp_path/'a'/'results.json').read_text())['data']
    rc, out, err = finetune(capsys, tmp_path/'b', ck, '--regimes', 'full,frozen_everything', roads=roads)
    one_line_error(rc, err, 'frozen_everything', 'scratch')
    assert not (tmp_path/'b').exists()


# -- the other commands' data errors ---------------------------------------------------------------------------------
def test_explain_errors_are_one_line(capsys, tmp_path, imagenet):
    rc, out, err = run(capsys, 'explain', '--imagenet', tmp_path/'nowhere', '--models', 'convnext_atto', '--allow-random-weights')
    one_line_error(rc, err, 'nowhere')
    rc, out, err = run(capsys, 'explain', '--road-images', '-1')
    one_line_error(rc, err, '--road-images')
    (tmp_path/'res'/'chunks'/'other_model').mkdir(parents=True); (tmp_path/'res'/'chunks'/'other_model'/'clean__s0.csv').write_text('x\n')
    rc, out, err = run(capsys, 'explain', '--imagenet', imagenet, '--models', 'convnext_atto', '--allow-random-weights',
                       '--results', tmp_path/'res', '--out', tmp_path/'e')
    one_line_error(rc, err, 'holds results of other_model, not of convnext_atto')

def test_explain_real_mode_without_road(capsys, tmp_path, imagenet):
    rc, out, err = run(capsys, 'explain', '--imagenet', imagenet, '--models', 'convnext_atto', '--allow-random-weights',
                       '--true', 1, '--pred', 2, '--transform', 'fliplr', '--steps', 1, '--road-images', 0, '--max-images', 2,
                       '--methods', 'gradcam', '--out', tmp_path/'e')
    assert rc == 0, err
    md = (tmp_path/'e'/'explain.md').read_text()
    assert 'ROAD' not in md and '(0 images)' not in md


# -- timm's own loaders reach the same reader and filter ----------------------------------------------------------------
def test_timm_generic_file_path_reads_official_vmamba_files(tmp_path, vm_sd):
    "`timm.create_model(..., pretrained_cfg_overlay=dict(file=...))` (and validate.py) on an official file with 4-D 1x1 weights."
    ck = S.official_vmamba_pth(tmp_path/'vssm.pth', S.favour_class(vm_sd, 5), S.favour_class(vm_sd, 7), conv_4d=True, prefix='module.')
    m = timm.create_model('test_vmamba', pretrained=True, pretrained_cfg_overlay=dict(file=str(ck))).eval()
    with torch.no_grad(): p = m(torch.randn(2, 3, 64, 64)).argmax(1)
    assert set(p.tolist()) == {7}          # timm's generic reader prefers 'model_ema' (ssm-explore commands take 'model')
    from ssm_explore.checkpoint import read_checkpoint
    sd = {k.removeprefix('module.'): v for k, v in read_checkpoint(ck)['model'].items()}
    assert any(v.dim() == 4 and v.shape[2:] == (1, 1) for k, v in sd.items() if 'in_proj' in k)
    timm.create_model('test_vmamba').load_state_dict(sd)   # a plain strict load: Linear2d's hook takes the 4-D 1x1 weights


def test_two_road_images_with_one_stem_are_named(tmp_path):
    from ssm_explore.roads import write_synthetic_roads, find_roads_pairs
    from ssm_explore.core import UserError
    root = write_synthetic_roads(tmp_path/'r', 'original', dict(train=1, valid=1, test=1), size=64)
    img = next((root/'train'/'sat').iterdir())
    shutil.copy(img, img.with_suffix('.png'))
    with pytest.raises(UserError, match=rf'{img.name} and {img.stem}.png|{img.stem}.png and {img.name}'):
        find_roads_pairs(root)


def test_ctrl_c_keeps_finished_chunks_says_how_to_resume_and_the_rerun_resumes(tmp_path, imagenet):
    import os, signal, subprocess, sys, time
    out = tmp_path/'r'
    cmd = [sys.executable, '-m', 'ssm_explore.commands.robustness', '--imagenet', str(imagenet), '--models', 'convnext_atto',
           '--allow-random-weights', '--per-class', '2', '--severities', '1,2', '--out', str(out), '--batch-size', '2']
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while len(list(out.glob('chunks/*/*.csv'))) < 2 and time.time() - t0 < 240 and p.poll() is None: time.sleep(0.2)
    assert p.poll() is None, 'the run ended before it could be interrupted'
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    said = [l for l in err.splitlines() if l.startswith('ssm-explore robustness:')]   # (progress bars aside)
    assert 'Traceback' not in err and len(said) == 1 and said[0].startswith('ssm-explore robustness: interrupted'), err
    assert f'kept in {out}' in said[0] and 'resume' in said[0]
    done = {q: q.stat().st_mtime_ns for q in out.glob('chunks/*/*.csv')}
    assert done and not list(out.glob('chunks/*/.*.tmp'))                 # finished chunks kept, no half-written ones
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert all(q.stat().st_mtime_ns == t for q, t in done.items())         # the rerun resumed: nothing recomputed
    assert len(list(out.glob('chunks/*/*.csv'))) > len(done)
