"Checkpoint I/O on files in the official formats: what loads, which weights are picked, what is refused and how."
import json, os, warnings

import numpy as np
import pytest
import timm
import torch
from timm.models._helpers import load_state_dict

import ssm_explore  # noqa: F401  (registers test_vmamba in timm)
import standins as S
from ssm_explore.checkpoint import (CheckpointError, InertConfig, checkpoint_info, read_checkpoint, register_safe_globals,
                                    save_checkpoint, sniff_format, state_dict_of)

VMAMBA_KEYS = {'model', 'model_ema', 'optimizer', 'lr_scheduler', 'max_accuracy', 'scaler', 'epoch', 'config', 'max_accuray_ema'}


@pytest.fixture(scope='module')
def vmamba_sd():
    return timm.create_model('test_vmamba').state_dict()

@pytest.fixture(scope='module')
def vmamba_file(tmp_path_factory, vmamba_sd):
    "An official-format VMamba checkpoint whose trained head predicts class 1 and whose EMA head predicts class 2."
    path = tmp_path_factory.mktemp('vmamba') / 'vssm1_tiny_0230s_ckpt_epoch_264.pth'
    return S.official_vmamba_pth(path, S.favour_class(vmamba_sd, 1), S.favour_class(vmamba_sd, 2))

def one_line_error(fn, *names)->str:
    "Run `fn`, expect a CheckpointError; check its message is one line containing every `names`; return it."
    with pytest.raises(CheckpointError) as e: fn()
    msg = str(e.value)
    assert '\n' not in msg and ' — ' in msg, msg
    for n in names: assert str(n) in msg, (n, msg)
    return msg

@pytest.fixture
def no_registered_globals():
    "Torch's allowlist without anything registered process-wide (importing ssm_explore may register ours); restored after."
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals(); torch.serialization.add_safe_globals(saved)


# -- VMamba releases -----------------------------------------------------------------------------------------------------
def test_official_vmamba_file_loads_with_its_config_as_data(vmamba_file):
    ck = read_checkpoint(vmamba_file)
    assert set(ck) == VMAMBA_KEYS
    cfg = ck['config']
    assert isinstance(cfg, InertConfig) and cfg.pickled_class == 'yacs.config.CfgNode'
    assert cfg['MODEL']['TYPE'] == 'vssm' and cfg.MODEL.VSSM.SSM_FORWARDTYPE == 'v05_noz'
    assert cfg.TRAIN.OPTIMIZER.BETAS == (0.9, 0.999) and isinstance(cfg.MODEL.VSSM, InertConfig)
    assert ck['optimizer']['param_groups'][0]['lr'] == 1e-3 and isinstance(ck['epoch'], int)

def test_trained_weights_by_default_ema_on_request(vmamba_file, one_thread):
    ck = read_checkpoint(vmamba_file)
    model = timm.create_model('test_vmamba').eval()
    for ema, key, cls in ((False, 'model', 1), (True, 'model_ema', 2)):
        sd, got = state_dict_of(ck, ema=ema, source=vmamba_file)
        assert got == key
        model.load_state_dict(sd)
        with torch.no_grad(): assert model(torch.randn(2, 3, 32, 32)).argmax(1).tolist() == [cls, cls]

def test_no_ema_weights_is_one_line(tmp_path, vmamba_sd):
    p = S.official_vmamba_pth(tmp_path / 'no_ema.pth', vmamba_sd)
    assert state_dict_of(read_checkpoint(p))[1] == 'model'
    one_line_error(lambda: state_dict_of(read_checkpoint(p), ema=True, source=p), 'no_ema.pth', 'no EMA weights')

def test_module_prefix_is_stripped_and_4d_weights_kept(tmp_path, vmamba_sd):
    p = S.official_vmamba_pth(tmp_path / 'ddp.pth', vmamba_sd, prefix='module.', conv_4d=True)
    assert all(k.startswith('module.') for k in read_checkpoint(p)['model'])
    sd, _ = state_dict_of(read_checkpoint(p))
    assert set(sd) == set(vmamba_sd)
    w = vmamba_sd['layers.0.blocks.0.op.in_proj.weight']
    assert sd['layers.0.blocks.0.op.in_proj.weight'].shape == (*w.shape, 1, 1)   # reshaping is the model's business
    assert sd['classifier.head.weight'].dim() == 2

@pytest.mark.parametrize('name, legacy', [('bare.pth', False), ('bare_legacy.pth', True)])
def test_bare_state_dict(tmp_path, vmamba_sd, name, legacy):
    p = S.official_vmamba_pth(tmp_path / name, vmamba_sd, bare=True, legacy=legacy)
    sd, key = state_dict_of(read_checkpoint(p))
    assert key == '(bare state dict)' and torch.equal(sd['classifier.head.bias'], vmamba_sd['classifier.head.bias'])


# -- code in the file ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('how, legacy, name', [('exec', False, 'builtins.exec'), ('exec', True, 'builtins.exec'),
                                               ('system', False, 'posix.system' if os.name == 'posix' else 'nt.system'),
                                               ('system', True, 'system')])
def test_payload_is_refused_and_never_runs(tmp_path, how, legacy, name):
    marker = tmp_path / 'payload_ran'
    p = S.payload_pth(tmp_path / f'evil_{how}.pth', marker, how, legacy=legacy)
    one_line_error(lambda: read_checkpoint(p), p.name, name, '--trust-checkpoint')
    one_line_error(lambda: checkpoint_info(p), p.name, name)
    assert not marker.exists()

def test_nnunet_payload_in_init_args_is_refused(tmp_path):
    marker = tmp_path / 'payload_ran'
    p = S.nnunet_checkpoint_final(tmp_path / 'checkpoint_final.pth', {'w': torch.ones(1)}, payload=marker)
    one_line_error(lambda: read_checkpoint(p), 'checkpoint_final.pth', 'builtins.exec', '--trust-checkpoint')
    assert not marker.exists()

def test_trust_runs_the_file_and_says_so(tmp_path):
    marker = tmp_path / 'payload_ran'
    p = S.payload_pth(tmp_path / 'trusted.pth', marker)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ck = read_checkpoint(p, trust=True)
    assert marker.exists() and state_dict_of(ck)[1] == 'model'
    assert len(w) == 1 and 'trusted.pth' in str(w[0].message) and 'unsafe' in str(w[0].message)

def test_trust_without_yacs_names_the_module(vmamba_file):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        one_line_error(lambda: read_checkpoint(vmamba_file, trust=True), vmamba_file.name, "'yacs'")


# -- argparse.Namespace (timm train.py, DeiT) and OmegaConf (Lightning) ----------------------------------------------------
def test_timm_training_checkpoint(tmp_path):
    w, e = {'head.bias': torch.tensor([0., 1.])}, {'head.bias': torch.tensor([1., 0.])}
    p = S.timm_train_checkpoint(tmp_path / 'model_best.pth.tar', w, e)
    ck = read_checkpoint(p)
    assert ck['args'].model == 'convnext_atto' and vars(ck['args'])['opt'] == 'adamw'
    assert [state_dict_of(ck, ema=x)[1] for x in (False, True)] == ['state_dict', 'state_dict_ema']
    assert state_dict_of(ck, ema=True)[0]['head.bias'].argmax() == 0
    assert checkpoint_info(p, ck)['config'] == {'key': 'args', 'class': 'argparse.Namespace', 'model': 'convnext_atto', 'num_classes': 1000}

def test_deit_checkpoint(tmp_path):
    p = S.deit_checkpoint(tmp_path / 'checkpoint.pth', {'w': torch.ones(1)}, {'w': torch.zeros(1)})
    ck = read_checkpoint(p)
    assert ck['args'].input_size == 224
    assert [state_dict_of(ck, ema=x)[1] for x in (False, True)] == ['model', 'model_ema']

def test_lightning_omegaconf_hyperparameters_show_their_contents(tmp_path):
    hp = {'model': {'name': 'vssm', 'depths': [2, 2, 9, 2], 'lr': 1e-3, 'ema': True, 'note': None}, 'seed': 0}
    p = S.lightning_ckpt(tmp_path / 'epoch=9.ckpt', {'model.w': torch.ones(1)}, hp)
    ck = read_checkpoint(p)
    assert ck['hyper_parameters'] == hp and isinstance(ck['hyper_parameters'].model, InertConfig)
    assert ck['hyper_parameters'].pickled_class == 'omegaconf.dictconfig.DictConfig'
    sd, key = state_dict_of(ck)
    assert key == 'state_dict' and list(sd) == ['model.w']


# -- nnU-Net v2 / U-Mamba ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('new_style', [True, False])
def test_nnunet_checkpoint_final(tmp_path, new_style):
    weights = {'encoder.stages.0.0.convs.0.conv.weight': torch.ones(8, 1, 3, 3)}
    p = S.nnunet_checkpoint_final(tmp_path / 'checkpoint_final.pth', weights, new_style=new_style)
    ck = read_checkpoint(p)
    sd, key = state_dict_of(ck)
    assert key == 'network_weights' and list(sd) == list(weights) and torch.equal(*sd.values(), *weights.values())
    assert type(ck['_best_ema']) is np.float64 and type(ck['logging']['dice_per_class_or_region'][0][1]) is np.float64
    assert ('device' in ck['init_args']) == new_style and ck['init_args'].get('device', torch.device('cpu')) == torch.device('cpu')
    assert ('architecture' in ck['init_args']['plans']['configurations']['2d']) == new_style
    assert ck['inference_allowed_mirroring_axes'] == (0, 1) and ck['grad_scaler_state'] is None
    info = checkpoint_info(p, ck)
    assert info['config'] == {'key': 'init_args', 'class': 'builtins.dict', 'configuration': '2d', 'fold': 0,
                              'trainer_name': 'nnUNetTrainerUMambaBot'}
    json.dumps(info)


def test_numpy_scalars_under_numpy_1_and_2_names(tmp_path):
    p = S.numpy2_scalars_pth(tmp_path / 'np2.pth')
    assert read_checkpoint(p)['logging']['mean_fg_dice'] == [0.5, 0.75]
    assert type(read_checkpoint(p)['logging']['mean_fg_dice'][0]) is np.float64

def test_numpy_arrays_are_not_on_the_list(tmp_path):
    torch.save({'a': np.zeros(3)}, tmp_path / 'arr.pth')
    one_line_error(lambda: read_checkpoint(tmp_path / 'arr.pth'), 'arr.pth', 'numpy.ndarray')

# -- timm / Hugging Face weights files, and timm's own loader ----------------------------------------------------------------
@pytest.mark.parametrize('name', ['model.safetensors', 'pytorch_model.bin'])
def test_timm_weights_files(tmp_path, name):
    model = timm.create_model('convnext_atto')
    p = S.weights_file(tmp_path / name, model.state_dict())
    sd, key = state_dict_of(read_checkpoint(p))
    assert key == '(bare state dict)' and sniff_format(p) == ('safetensors' if name.endswith('.safetensors') else 'torch')
    assert model.load_state_dict(sd, strict=True)

def test_timm_loader_reads_official_vmamba_files_after_register(vmamba_file, no_registered_globals):
    with pytest.raises(Exception, match='yacs.config.CfgNode'): load_state_dict(str(vmamba_file))
    register_safe_globals()
    assert load_state_dict(str(vmamba_file), use_ema=False)['classifier.head.bias'].argmax() == 1
    assert load_state_dict(str(vmamba_file))['classifier.head.bias'].argmax() == 2   # timm prefers the EMA weights
    read_checkpoint(vmamba_file)                      # its temporary allowlist must not undo the registration
    model = timm.create_model('test_vmamba', pretrained=True, pretrained_cfg_overlay=dict(file=str(vmamba_file)))
    assert model.classifier.head.bias.argmax() == 2

def test_read_checkpoint_needs_no_registration(vmamba_file, no_registered_globals):
    assert read_checkpoint(vmamba_file)['config'].MODEL.TYPE == 'vssm'
    assert not any(isinstance(g, tuple) and g[1] == 'yacs.config.CfgNode' for g in torch.serialization.get_safe_globals())


# -- files that are not (whole) checkpoints -----------------------------------------------------------------------------
BROKEN = {'truncated.pth': (lambda p, src: S.truncated(p, src), 'truncated or damaged'),
          'zero.pth': (lambda p, src: S.zero_bytes(p), 'zero bytes'),
          'notes.pth': (lambda p, src: S.text_file(p), 'a text file'),
          'download.pth': (lambda p, src: S.html_page(p), 'an HTML page'),
          'lfs.pth': (lambda p, src: S.lfs_pointer(p), 'Git LFS pointer'),
          'image.pth': (lambda p, src: S.png_file(p), 'a PNG image')}

@pytest.mark.parametrize('name', sorted(BROKEN))
def test_broken_file_is_one_line(tmp_path, vmamba_file, name):
    make, what = BROKEN[name]
    p = tmp_path / name; make(p, vmamba_file)
    one_line_error(lambda: read_checkpoint(p), name, what)

def test_truncated_legacy_file(tmp_path, vmamba_sd):
    src = S.official_vmamba_pth(tmp_path / 'old.pth', vmamba_sd, legacy=True)
    p = S.truncated(tmp_path / 'old_half.pth', src)
    one_line_error(lambda: read_checkpoint(p), 'old_half.pth', 'truncated or damaged')

def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'): read_checkpoint(tmp_path / 'nope.pth')
    one_line_error(lambda: read_checkpoint(tmp_path), str(tmp_path), 'folder')

def test_not_a_state_dict_names_keys(tmp_path):
    p = save_checkpoint({'optimizer': {'state': {}}, 'epoch': 3}, tmp_path / 'opt.pth')
    one_line_error(lambda: state_dict_of(read_checkpoint(p), source=p), 'opt.pth', "'optimizer', 'epoch'")


# -- info and saving --------------------------------------------------------------------------------------------------
def test_checkpoint_info_is_a_json_record(vmamba_file):
    info = checkpoint_info(vmamba_file)
    assert json.loads(json.dumps(info)) == info
    assert info['path'] == str(vmamba_file.resolve()) and info['size'] == vmamba_file.stat().st_size
    assert len(info['sha256']) == 64 and info['format'] == 'torch' and info['state_dict_key'] == 'model'
    assert set(info['keys']) == VMAMBA_KEYS
    assert info['config'] == {'key': 'config', 'class': 'yacs.config.CfgNode', 'MODEL.TYPE': 'vssm',
                              'MODEL.NAME': 'vssm1_tiny_0230s', 'MODEL.NUM_CLASSES': 1000, 'DATA.IMG_SIZE': 224}

def test_save_checkpoint_reads_back_safely_with_normal_permissions(tmp_path, vmamba_sd):
    old = os.umask(0o022)
    try: p = save_checkpoint({'model': vmamba_sd, 'epoch': 1, 'classes': ('cat', 'dog'), 'acc': 0.5}, tmp_path / 'a' / 'own.pth')
    finally: os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644 and [q.name for q in p.parent.iterdir()] == ['own.pth']
    sd, key = state_dict_of(read_checkpoint(p))
    assert key == 'model' and all(torch.equal(sd[k], v) for k, v in vmamba_sd.items())
    one_line_error(lambda: save_checkpoint({'logging': [np.float64(1)]}, tmp_path / 'bad.pth'), 'bad.pth', "obj['logging'][0]", 'numpy.float64')
    assert not (tmp_path / 'bad.pth').exists()
