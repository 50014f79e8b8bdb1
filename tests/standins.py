"""Files in the formats the official projects publish, made locally from tiny state dicts (nothing is downloaded).

Used by tests/test_checkpoint.py and by the command-line bad-input tests. Every generator writes one file and returns its
path. Foreign classes (yacs `CfgNode`, OmegaConf `DictConfig`) are pickled under their real module names by registering
a stand-in module in `sys.modules` only while saving (the real package is used when it is installed), so a loader can
never import them.
"""
from __future__ import annotations
import argparse, builtins, contextlib, dataclasses, os, sys, types, typing
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch


# -- saving -------------------------------------------------------------------------------------------------------
def _save(obj, path, legacy:bool=False)->Path:
    "torch.save `obj` to `path`; `legacy`: the pre-1.6 (non-zip) format some old releases use."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path

@contextlib.contextmanager
def fake_modules(**modules):
    "Register module objects in `sys.modules` (e.g. `**{'yacs.config': m}`) while pickling, then remove them again."
    made = {}
    for name, mod in modules.items():
        parts = name.split('.')
        for i in range(1, len(parts)):
            made.setdefault('.'.join(parts[:i]), types.ModuleType('.'.join(parts[:i])))
        made[name] = mod
    clash = [n for n in made if n in sys.modules]
    if clash: raise RuntimeError(f"modules {clash} are importable here: stand-ins would shadow them")
    sys.modules.update(made)
    try: yield
    finally:
        for n in made: sys.modules.pop(n, None)


# -- yacs: VMamba pickles its training config, a yacs CfgNode, into every checkpoint --------------------------------------
class CfgNode(dict):
    "Same pickle as `yacs.config.CfgNode` (yacs 0.1.8): a dict subclass with four flags in its `__dict__`."
    IMMUTABLE, DEPRECATED_KEYS, RENAMED_KEYS, NEW_ALLOWED = '__immutable__', '__deprecated_keys__', '__renamed_keys__', '__new_allowed__'
    def __init__(self, init_dict=None, key_list=None, new_allowed=False):
        init_dict = {k: CfgNode(v) if type(v) is dict else v for k, v in (init_dict or {}).items()}
        super().__init__(init_dict)
        self.__dict__.update({CfgNode.IMMUTABLE: False, CfgNode.DEPRECATED_KEYS: set(), CfgNode.RENAMED_KEYS: {},
                              CfgNode.NEW_ALLOWED: new_allowed})
    def __getattr__(self, name):
        if name in self: return self[name]
        raise AttributeError(name)
    def __setattr__(self, name, value): self[name] = value

CfgNode.__module__ = 'yacs.config'

def _module(name:str, *objs)->types.ModuleType:
    m = types.ModuleType(name)
    for o in objs: setattr(m, o.__name__, o)
    return m

def vmamba_config(**overrides)->dict:
    "Nested dicts shaped like VMamba's training config (classification/config.py) of the tiny 0230s model (representative, not every field)."
    cfg = dict(
        BASE=[''], OUTPUT='output/vssm1_tiny_0230s', TAG='default', SAVE_FREQ=1, PRINT_FREQ=10, SEED=0, EVAL_MODE=False,
        THROUGHPUT_MODE=False, TRAINCOST_MODE=False, FUSED_LAYERNORM=False, AMP_ENABLE=True, ENABLE_AMP=False, LOCAL_RANK=0,
        DATA=dict(BATCH_SIZE=128, DATA_PATH='/dataset/ImageNet2012', DATASET='imagenet', IMG_SIZE=224, INTERPOLATION='bicubic',
                  ZIP_MODE=False, CACHE_MODE='part', PIN_MEMORY=True, NUM_WORKERS=8, MASK_PATCH_SIZE=32, MASK_RATIO=0.6),
        MODEL=dict(TYPE='vssm', NAME='vssm1_tiny_0230s', PRETRAINED='', RESUME='', NUM_CLASSES=1000, DROP_RATE=0.0,
                   DROP_PATH_RATE=0.2, LABEL_SMOOTHING=0.1, MMCKPT=False,
                   VSSM=dict(PATCH_SIZE=4, IN_CHANS=3, DEPTHS=[2, 2, 8, 2], EMBED_DIM=96, SSM_D_STATE=1, SSM_RATIO=1.0,
                             SSM_RANK_RATIO=1.0, SSM_DT_RANK='auto', SSM_ACT_LAYER='silu', SSM_CONV=3, SSM_CONV_BIAS=False,
                             SSM_DROP_RATE=0.0, SSM_INIT='v0', SSM_FORWARDTYPE='v05_noz', MLP_RATIO=4.0,
                             MLP_ACT_LAYER='gelu', MLP_DROP_RATE=0.0, GMLP=False, PATCH_NORM=True, NORM_LAYER='ln2d',
                             DOWNSAMPLE='v3', PATCHEMBED='v2', POSEMBED=False)),
        TRAIN=dict(START_EPOCH=0, EPOCHS=300, WARMUP_EPOCHS=20, WEIGHT_DECAY=0.05, BASE_LR=1e-3, WARMUP_LR=1e-6, MIN_LR=1e-5,
                   CLIP_GRAD=5.0, AUTO_RESUME=True, ACCUMULATION_STEPS=1, USE_CHECKPOINT=False,
                   LR_SCHEDULER=dict(NAME='cosine', DECAY_EPOCHS=30, DECAY_RATE=0.1, WARMUP_PREFIX=True, GAMMA=0.1, MULTISTEPS=[]),
                   OPTIMIZER=dict(NAME='adamw', EPS=1e-8, BETAS=(0.9, 0.999), MOMENTUM=0.9), LAYER_DECAY=1.0,
                   MOE=dict(SAVE_MASTER=False)),
        AUG=dict(COLOR_JITTER=0.4, AUTO_AUGMENT='rand-m9-mstd0.5-inc1', REPROB=0.25, REMODE='pixel', RECOUNT=1, MIXUP=0.8,
                 CUTMIX=1.0, CUTMIX_MINMAX=None, MIXUP_PROB=1.0, MIXUP_SWITCH_PROB=0.5, MIXUP_MODE='batch'),
        TEST=dict(CROP=True, SEQUENTIAL=False, SHUFFLE=False))
    for k, v in overrides.items(): cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg

def _yacs():
    "The real `yacs.config` when installed, else a module holding the stand-in `CfgNode` (registered only while saving)."
    try:
        import yacs.config
        return yacs.config, contextlib.nullcontext()
    except ImportError:
        m = _module('yacs.config', CfgNode)
        return m, fake_modules(**{'yacs.config': m})

def _adamw_state(state_dict:dict)->dict:
    "A real `torch.optim.AdamW` state dict (one step taken) for parameters shaped like `state_dict`."
    params = [torch.nn.Parameter(v.detach().float().clone()) for v in state_dict.values() if v.is_floating_point()][:4]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    for p in params: p.grad = torch.ones_like(p)
    opt.step()
    return opt.state_dict()

def _layout(sd:dict, prefix:str='', conv_4d=False)->dict:
    "`sd` with `prefix` on every key; `conv_4d`: 2-D '.weight's (all but the head, or those ending in the given suffixes) as (out, in, 1, 1)."
    def four(k, v):
        if v.dim() != 2 or not k.endswith('.weight') or not conv_4d: return False
        return not k.startswith('classifier.') if conv_4d is True else k.endswith(tuple(conv_4d))
    return {prefix + k: v[..., None, None] if four(k, v) else v for k, v in sd.items()}

def official_vmamba_pth(path, state_dict:dict, ema_state_dict:dict|None=None,
                        config:dict|None=None, # nested dicts pickled as a yacs CfgNode (default: `vmamba_config()`)
                        prefix:str='', # e.g. 'module.' as DataParallel saves it
                        conv_4d=False, # store 1x1 projection weights 4-D, (out, in, 1, 1)
                        bare:bool=False, # save the state dict alone
                        legacy:bool=False, epoch:int=264, max_accuracy:float=82.6)->Path:
    "A checkpoint as VMamba's `save_checkpoint_ema` writes it (`ckpt_epoch_*.pth` of the releases)."
    sd = _layout(state_dict, prefix, conv_4d)
    if bare: return _save(sd, path, legacy)
    yacs, ctx = _yacs()
    obj = {'model': sd, 'optimizer': _adamw_state(state_dict),
           'lr_scheduler': {'t_initial': 300, 'lr_min': 1e-5, 'cycle_mul': 1.0, 'warmup_t': 20, 'base_values': [1e-3],
                            'metric': None, 'noise_range_t': None},
           'max_accuracy': max_accuracy, 'scaler': {'scale': 65536.0, 'growth_factor': 2.0, 'backoff_factor': 0.5,
                                                    'growth_interval': 2000, '_growth_tracker': 0},
           'epoch': epoch, 'config': yacs.CfgNode(config if config is not None else vmamba_config())}
    if ema_state_dict is not None:   # sic: the official key has the typo 'max_accuray_ema'
        obj.update(model_ema=_layout(ema_state_dict, prefix, conv_4d), max_accuray_ema=max_accuracy + 0.1)
    with ctx: return _save(obj, path, legacy)


# -- code that runs when unpickled -------------------------------------------------------------------------------------
class Payload:
    "Unpickles as a call that creates `marker` (via `builtins.exec` or `os.system`): what a malicious checkpoint does."
    def __init__(self, marker, how:str='exec'): self.marker, self.how = str(marker), how
    def __reduce__(self):
        if self.how == 'system': return (os.system, (f"touch '{self.marker}'",))
        return (builtins.exec, (f"with open({self.marker!r}, 'w') as f: f.write('payload ran')",))

def payload_pth(path, marker, how:str='exec', state_dict:dict|None=None, legacy:bool=False)->Path:
    "A checkpoint that looks ordinary ('model' weights) but runs code creating `marker` when loaded with pickle."
    sd = state_dict if state_dict is not None else {'w': torch.zeros(2)}
    return _save({'model': sd, 'epoch': 1, 'note': Payload(marker, how)}, path, legacy)


# -- argparse.Namespace: timm's train.py and DeiT pickle their command-line args ----------------------------------------
def timm_train_checkpoint(path, state_dict:dict, ema_state_dict:dict|None=None, arch:str='convnext_atto', **args)->Path:
    "A checkpoint as timm's `CheckpointSaver` writes it: 'state_dict', 'state_dict_ema', 'args' (a Namespace), ..."
    ns = argparse.Namespace(model=arch, num_classes=1000, img_size=None, lr=5e-4, epochs=300, opt='adamw', **args)
    obj = {'epoch': 299, 'arch': arch, 'state_dict': state_dict, 'optimizer': _adamw_state(state_dict), 'version': 2,
           'args': ns, 'metric': 80.1}
    if ema_state_dict is not None: obj['state_dict_ema'] = ema_state_dict
    return _save(obj, path)

def deit_checkpoint(path, state_dict:dict, ema_state_dict:dict|None=None, **args)->Path:
    "A checkpoint as DeiT's main.py writes it: 'model', 'optimizer', 'lr_scheduler', 'epoch', 'model_ema', 'scaler', 'args'."
    ns = argparse.Namespace(model='deit_small_patch16_224', input_size=224, nb_classes=1000, lr=5e-4, **args)
    obj = {'model': state_dict, 'optimizer': _adamw_state(state_dict), 'lr_scheduler': {'base_values': [5e-4]}, 'epoch': 299,
           'scaler': {'scale': 65536.0}, 'args': ns}
    if ema_state_dict is not None: obj['model_ema'] = ema_state_dict
    return _save(obj, path)


# -- OmegaConf: PyTorch Lightning pickles Hydra/OmegaConf hyper-parameters ------------------------------------------------
def _named(obj, module:str):
    obj.__module__ = module
    return obj

@dataclasses.dataclass
class Metadata:
    "Same pickle as `omegaconf.base.Metadata` (2.3)."
    ref_type: typing.Any; object_type: typing.Any; optional: bool; key: typing.Any
    flags: dict|None = None; flags_root: bool = False
    resolver_cache: dict = dataclasses.field(default_factory=lambda: defaultdict(dict))

@dataclasses.dataclass
class ContainerMetadata(Metadata):
    key_type: typing.Any = None; element_type: typing.Any = None

class DictConfig:
    "Same pickle as `omegaconf.DictConfig` (2.3): `_metadata`, `_parent`, `_content` (key -> node)."
class ListConfig:
    "Same pickle as `omegaconf.ListConfig` (2.3): `_content` is a list of nodes."
class AnyNode:
    "Same pickle as `omegaconf.nodes.AnyNode`: `_metadata`, `_parent`, `_val`."

_OMEGA = {'omegaconf.base': (Metadata, ContainerMetadata), 'omegaconf.dictconfig': (DictConfig,),
          'omegaconf.listconfig': (ListConfig,), 'omegaconf.nodes': (AnyNode,)}
for _m, _cs in _OMEGA.items():
    for _c in _cs: _named(_c, _m)

def omegaconf_tree(value, parent=None, key=None):
    "`value` (nested dicts/lists/scalars) as the objects `OmegaConf.create(value)` builds, ready to pickle."
    if isinstance(value, (dict, list)):
        node = (DictConfig if isinstance(value, dict) else ListConfig)()
        node._metadata = ContainerMetadata(typing.Any, type(value), True, key, {}, key_type=typing.Any if isinstance(value, dict) else int,
                                           element_type=typing.Any)
        node._parent = parent
        items = value.items() if isinstance(value, dict) else enumerate(value)
        content = {k: omegaconf_tree(v, node, k) for k, v in items}
        node._content = content if isinstance(value, dict) else list(content.values())
        return node
    node = AnyNode()
    node._metadata, node._parent, node._val = Metadata(typing.Any, None, True, key, {}), parent, value
    return node

def lightning_ckpt(path, state_dict:dict, hparams:dict)->Path:
    "A PyTorch Lightning checkpoint whose hyper-parameters are an OmegaConf DictConfig (as Hydra projects save them)."
    obj = {'epoch': 9, 'global_step': 1000, 'pytorch-lightning_version': '2.4.0', 'state_dict': state_dict,
           'optimizer_states': [_adamw_state(state_dict)], 'lr_schedulers': [], 'hparams_name': 'cfg',
           'hyper_parameters': omegaconf_tree(hparams), 'hparams_type': DictConfig}
    try:
        import omegaconf
        obj['hyper_parameters'], obj['hparams_type'] = omegaconf.OmegaConf.create(hparams), omegaconf.DictConfig
        return _save(obj, path)
    except ImportError:
        with fake_modules(**{m: _module(m, *cs) for m, cs in _OMEGA.items()}): return _save(obj, path)


# -- nnU-Net v2 (and U-Mamba, which trains with it): checkpoint_final.pth -------------------------------------------------
def nnunet_plans(new_style:bool=True)->dict:
    "A small nnU-Net v2 plans dict: `new_style` has current nnU-Net's 'architecture' block, else the older flat keys U-Mamba reads."
    c2d = dict(data_identifier='nnUNetPlans_2d', preprocessor_name='DefaultPreprocessor', batch_size=12, patch_size=[64, 64],
               median_image_size_in_voxels=[256.0, 256.0], spacing=[1.0, 1.0], normalization_schemes=['ZScoreNormalization'],
               use_mask_for_norm=[False], resampling_fn_data='resample_data_or_seg_to_shape', batch_dice=True)
    stages = dict(n_stages=4, features_per_stage=[8, 16, 32, 64], kernel_sizes=[[3, 3]] * 4, strides=[[1, 1]] + [[2, 2]] * 3,
                  n_conv_per_stage=[2] * 4, n_conv_per_stage_decoder=[2] * 3)
    if new_style:
        c2d['architecture'] = dict(network_class_name='dynamic_network_architectures.architectures.unet.PlainConvUNet',
                                   arch_kwargs=dict(**stages, conv_bias=True, norm_op='torch.nn.modules.instancenorm.InstanceNorm2d',
                                                    norm_op_kwargs={'eps': 1e-05, 'affine': True}, nonlin='torch.nn.LeakyReLU',
                                                    nonlin_kwargs={'inplace': True}),
                                   _kw_requires_import=['norm_op', 'nonlin'])
    else:
        c2d.update(UNet_class_name='PlainConvUNet', UNet_base_num_features=8, unet_max_num_features=64,
                   n_conv_per_stage_encoder=stages['n_conv_per_stage'], n_conv_per_stage_decoder=stages['n_conv_per_stage_decoder'],
                   num_pool_per_axis=[3, 3], pool_op_kernel_sizes=stages['strides'], conv_kernel_sizes=stages['kernel_sizes'])
    return dict(dataset_name='Dataset701_AbdomenCT', plans_name='nnUNetPlans', original_median_spacing_after_transp=[1.0, 1.0, 1.0],
                image_reader_writer='SimpleITKIO', transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2],
                configurations={'2d': c2d}, experiment_planner_used='ExperimentPlanner', label_manager='LabelManager',
                foreground_intensity_properties_per_channel={'0': {'mean': 0.5, 'std': 0.2, 'max': 1.0, 'min': 0.0}})

def _nnunet_logging(epochs:int=3, n_classes:int=2)->dict:
    "nnUNetLogger.get_checkpoint(): lists per epoch, the metrics as NumPy float64 as nnU-Net computes them."
    f = np.float64
    return {'mean_fg_dice': [f(0.5 + 0.1 * e) for e in range(epochs)], 'ema_fg_dice': [f(0.45 + 0.1 * e) for e in range(epochs)],
            'dice_per_class_or_region': [[f(0.5 + 0.01 * c) for c in range(n_classes)] for _ in range(epochs)],
            'train_losses': [f(-0.1 * e) for e in range(epochs)], 'val_losses': [f(-0.09 * e) for e in range(epochs)],
            'lrs': [0.01 * (1 - e / 1000) ** 0.9 for e in range(epochs)],
            'epoch_start_timestamps': [1.7e9 + 60 * e for e in range(epochs)], 'epoch_end_timestamps': [1.7e9 + 60 * e + 55 for e in range(epochs)]}

def nnunet_checkpoint_final(path, network_weights:dict, plans:dict|None=None, init_args_extra:dict|None=None,
                            payload=None, # a marker path: put an object that would create it into init_args
                            new_style:bool=True, # current nnU-Net: 'device' in init_args, new plans layout; else U-Mamba's older nnU-Net
                            trainer_name:str='nnUNetTrainerUMambaBot')->Path:
    "nnU-Net v2's checkpoint_final.pth as `nnUNetTrainer.save_checkpoint` writes it (on a CPU: no grad scaler state)."
    init_args = dict(plans=plans if plans is not None else nnunet_plans(new_style), configuration='2d', fold=0,
                     dataset_json={'channel_names': {'0': 'CT'}, 'labels': {'background': 0, 'organ': 1}, 'numTraining': 10,
                                   'file_ending': '.nii.gz'}, unpack_dataset=True)
    if new_style: init_args['device'] = torch.device('cpu')
    init_args.update(init_args_extra or {})
    if payload is not None: init_args['logger'] = Payload(payload)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.01, momentum=0.99, nesterov=True)
    obj = {'network_weights': network_weights, 'optimizer_state': opt.state_dict(), 'grad_scaler_state': None,
           'logging': _nnunet_logging(), '_best_ema': np.float64(0.61), 'current_epoch': 1000, 'init_args': init_args,
           'trainer_name': trainer_name, 'inference_allowed_mirroring_axes': (0, 1)}
    return _save(obj, path)


def numpy2_scalars_pth(path, values=(0.5, 0.75))->Path:
    "NumPy float64 scalars pickled under NumPy 2's module name (`numpy._core.multiarray.scalar`), whatever NumPy runs here."
    path = _save({'logging': {'mean_fg_dice': [np.float64(v) for v in values]}}, path, legacy=True)  # a plain pickle stream
    data = path.read_bytes()
    for old in (b'cnumpy.core.multiarray\nscalar\n', b'cnumpy._core.multiarray\nscalar\n'):
        data = data.replace(old, b'cnumpy._core.multiarray\nscalar\n')
    assert b'numpy._core.multiarray' in data
    path.write_bytes(data); return path

# -- timm / Hugging Face weights files ------------------------------------------------------------------------------------
def weights_file(path, state_dict:dict)->Path:
    "A bare state dict as `.safetensors` (`model.safetensors` on the Hub) or, for any other suffix, `torch.save`d (`pytorch_model.bin`)."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix != '.safetensors': return _save(state_dict, path)
    import safetensors.torch
    safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata={'format': 'pt'})
    return path


# -- files that are not checkpoints ---------------------------------------------------------------------------------------
def truncated(path, source)->Path:
    "The first half of the file `source` (an interrupted download)."
    data = Path(source).read_bytes()
    Path(path).write_bytes(data[:len(data) // 2]); return Path(path)

def zero_bytes(path)->Path:
    Path(path).write_bytes(b''); return Path(path)

def text_file(path, text:str='model weights: see https://example.org/weights\n')->Path:
    Path(path).write_text(text); return Path(path)

def html_page(path)->Path:
    "What a failed download often saves: an HTML page."
    Path(path).write_text('<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in</body></html>\n')
    return Path(path)

def lfs_pointer(path)->Path:
    "A Git LFS pointer checked out without `git lfs pull`."
    Path(path).write_text('version https://git-lfs.github.com/spec/v1\noid sha256:' + '0' * 64 + '\nsize 123456789\n')
    return Path(path)

def png_file(path)->Path:
    "A real 4x4 PNG image (under whatever name `path` has)."
    import PIL.Image
    PIL.Image.new('RGB', (4, 4), (200, 30, 30)).save(path, format='PNG'); return Path(path)


def favour_class(state_dict:dict, cls:int, head:str='classifier.head')->dict:
    "A copy of `state_dict` whose classifier `head` predicts class `cls` for every input (weight 0, bias one-hot)."
    sd = dict(state_dict)
    w, b = sd[f'{head}.weight'], sd[f'{head}.bias']
    sd[f'{head}.weight'], sd[f'{head}.bias'] = torch.zeros_like(w), torch.nn.functional.one_hot(torch.tensor(cls), len(b)).to(b.dtype) * 10
    return sd
