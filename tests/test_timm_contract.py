"""The VMamba models under timm's model contract (what timm's own model tests check without network).

Creation through the registry, pretrained cfgs, forward/backward, classifier reset and unpooled features, pre-logits,
feature extraction (getter and FX), torch.fx graphs, `forward_intermediates`, gradient checkpointing.
`test_vmamba` carries most checks; `vmamba_tiny` the ones at its real size; `vmamba_base` only what is cheap.
"""
import pytest
import timm
import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg
from timm.models._features import FeatureGetterNet, FeatureHookNet
from timm.models._features_fx import FeatureGraphNet, get_graph_node_names, create_feature_extractor

import ssm_explore  # noqa: F401  (registers the models)

SMALL = ['test_vmamba', 'vmamba_tiny']
ALL = ['test_vmamba', 'vmamba_tiny', 'vmamba_small', 'vmamba_base']
pytestmark = pytest.mark.usefixtures('one_thread')


def _model(name, seed=0, **kw):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kw).eval()

def _x(size=64, b=2, seed=1):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))

@pytest.fixture(scope='module')
def tvm(): return _model('test_vmamba')

def _get(model, path):
    for p in path.split('.'): model = getattr(model, p)
    return model


# -- the registry --------------------------------------------------------------------------------------------
def test_registry_finds_the_models_like_timms_own():
    assert set(ALL) <= set(timm.list_models('*vmamba*'))
    assert set(timm.list_models(module='vmamba')) == set(ALL)
    assert 'vmamba' in timm.list_modules()
    for n in ALL:
        assert timm.is_model(n) and callable(timm.models.model_entrypoint(n))
    # released weights carry a tag and show up as pretrained; the untrained test model does not
    assert set(timm.list_models('*vmamba*', pretrained=True)) == {'vmamba_tiny.in1k', 'vmamba_small.in1k', 'vmamba_base.in1k'}
    assert set(timm.list_pretrained('vmamba*')) == {'vmamba_tiny.in1k', 'vmamba_small.in1k', 'vmamba_base.in1k'}
    assert get_pretrained_cfg('test_vmamba').tag == 'untrained'
    assert not timm.is_model('vmamba_huge')


@pytest.mark.parametrize('name', ALL)
def test_pretrained_cfg_fields_are_sane(name):
    with torch.device('meta'): m = timm.create_model(name, pretrained=False)
    cfg = m.pretrained_cfg
    assert m.default_cfg == cfg and cfg['architecture'] == name
    assert cfg == {k: v for k, v in get_pretrained_cfg(name).to_dict().items() if k in cfg}
    c, h, w = cfg['input_size']
    assert c == 3 and h == w >= 32 and h % 32 == 0
    assert cfg['pool_size'] == (h // 32, w // 32)
    assert len(cfg['mean']) == len(cfg['std']) == 3 and all(0 < s < 1 for s in cfg['std'])
    assert 0 < cfg['crop_pct'] <= 1 and cfg['interpolation'] in ('bilinear', 'bicubic')
    assert cfg['num_classes'] == m.num_classes == 1000
    conv = _get(m, cfg['first_conv'])                      # real module paths, the ones timm adapts / replaces
    assert isinstance(conv, nn.Conv2d) and conv.in_channels == 3
    head = _get(m, cfg['classifier'])
    assert isinstance(head, nn.Linear) and head.out_features == 1000 and head is m.get_classifier()
    sd = m.state_dict()
    assert cfg['first_conv'] + '.weight' in sd and cfg['classifier'] + '.weight' in sd
    if name != 'test_vmamba':
        assert cfg['url'].startswith('https://') and cfg['custom_load'] and cfg['tag'] == 'in1k'
    assert timm.data.resolve_model_data_config(m)['input_size'] == cfg['input_size']


# -- forward, backward, classifier -------------------------------------------------------------------------
@pytest.mark.parametrize('name', SMALL)
def test_forward_backward_at_a_small_size(name):
    m = _model(name).train()
    x = _x(64)
    y = m(x)
    assert y.shape == (2, 1000) and torch.isfinite(y).all()
    y.mean().backward()
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad[:5]


def test_forward_features_at_the_cfg_input_size():
    for name in SMALL:
        m = _model(name)
        c, h, w = m.pretrained_cfg['input_size']
        with torch.no_grad(): f = m.forward_features(_x(h, b=1))
        assert f.shape == (1, m.num_features, *m.pretrained_cfg['pool_size'])


@pytest.mark.parametrize('name', SMALL)
def test_reset_classifier_and_unpooled_features(name):
    m = _model(name)
    x = _x(64)
    with torch.no_grad():
        f = m.forward_features(x)                          # (B, C, H/32, W/32), NCHW
        assert f.shape == (2, m.num_features, 2, 2)
        m.reset_classifier(0)
        pooled = m(x)
        assert pooled.shape == (2, m.num_features) and m.num_classes == 0
        assert isinstance(m.get_classifier(), nn.Identity)
        m.reset_classifier(0, '')
        unpooled = m(x)
        assert unpooled.shape == f.shape                   # what timm's '' pooling gives: the map, NCHW
        torch.testing.assert_close(unpooled, m.classifier.norm(f))
        torch.testing.assert_close(unpooled.mean((2, 3)), pooled)
        m.reset_classifier(10, 'avg')
        assert m(x).shape == (2, 10) and m.get_classifier().out_features == 10
    with pytest.raises(ValueError): m.reset_classifier(10, '')    # unpooled maps have no classifier
    with pytest.raises(ValueError): m.reset_classifier(0, 'max')


def test_create_model_unpooled_and_headless(tvm):
    x = _x(64)
    m = _model('test_vmamba', num_classes=0, global_pool='')
    m.load_state_dict(tvm.state_dict(), strict=False)
    with torch.no_grad():
        assert m(x).shape == tvm.forward_features(x).shape == (2, 192, 2, 2)
        torch.testing.assert_close(m(x), tvm.classifier.norm(tvm.forward_features(x)))
        h = _model('test_vmamba', num_classes=0)
        assert h(x).shape == (2, h.num_features) and h.num_features == h.head_hidden_size == 192
    assert _model('test_vmamba', num_classes=7)(x).shape == (2, 7)
    with pytest.raises(ValueError): _model('test_vmamba', global_pool='')   # 1000 classes need pooling


def test_forward_head_pre_logits(tvm):
    x = _x(64)
    with torch.no_grad():
        f = tvm.forward_features(x)
        pre = tvm.forward_head(f, pre_logits=True)
        assert pre.shape == (2, tvm.num_features)
        torch.testing.assert_close(tvm.get_classifier()(pre), tvm.forward_head(f))
        torch.testing.assert_close(tvm.forward_head(f), tvm(x))


def test_in_chans_and_drop_rates_are_accepted():
    m = _model('test_vmamba', in_chans=1, drop_rate=0.1, drop_path_rate=0.1)
    assert m.patch_embed[0].in_channels == 1 and m(_x(32)[:, :1]).shape == (2, 1000)


# -- features ------------------------------------------------------------------------------------------------
def test_num_features_and_feature_info(tvm):
    fi = tvm.feature_info
    assert [f['num_chs'] for f in fi] == tvm.dims == [24, 48, 96, 192]
    assert [f['reduction'] for f in fi] == [4, 8, 16, 32]
    assert tvm.num_features == fi[-1]['num_chs']
    for f in fi: assert isinstance(_get(tvm, f['module']), nn.Module)


_FEATURE_CASES = [(n, i, c) for n, i in [('test_vmamba', (0, 1, 2, 3)), ('test_vmamba', (1, 3)), ('vmamba_tiny', (2,))]
                  for c in ('getter', 'fx')] + [('test_vmamba', (1, 3), 'hook')]

@pytest.mark.parametrize('name,out_indices,feature_cls', _FEATURE_CASES)
def test_features_only(name, out_indices, feature_cls):
    x = _x(64)
    m = _model(name, features_only=True, out_indices=out_indices, feature_cls=feature_cls)
    assert isinstance(m, {'fx': FeatureGraphNet, 'getter': FeatureGetterNet, 'hook': FeatureHookNet}[feature_cls])
    with torch.no_grad(): outs = m(x)
    assert len(outs) == len(out_indices)
    assert [o.shape[1] for o in outs] == m.feature_info.channels()
    assert [64 // o.shape[-1] for o in outs] == m.feature_info.reduction()
    assert [o.shape[-2] for o in outs] == [o.shape[-1] for o in outs]
    ref = _model(name)                                   # same seed: the same weights as the wrapped model
    assert m.feature_info.channels() == [ref.feature_info[i]['num_chs'] for i in out_indices]
    with torch.no_grad(): want = ref.forward_intermediates(x, indices=list(out_indices), intermediates_only=True)
    for o, w in zip(outs, want): torch.testing.assert_close(o, w)


def test_fx_features_train_backward():
    m = _model('test_vmamba', features_only=True, out_indices=(1, 3), feature_cls='fx').train()
    outs = m(_x(64))
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in m.parameters())


# -- torch.fx ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', SMALL)
def test_fx_graph_of_the_whole_model(name):
    m = _model(name)
    train_nodes, eval_nodes = get_graph_node_names(m)
    assert eval_nodes[-1] == 'classifier.head'
    assert sum(n.endswith('op.ss2d_scan') for n in eval_nodes) == sum(len(s.blocks) for s in m.layers)
    fx = create_feature_extractor(m, return_nodes=[eval_nodes[-1]])
    x = _x(64)
    with torch.no_grad(): torch.testing.assert_close(fx(x)[eval_nodes[-1]], m(x))
    fxt = create_feature_extractor(m.train(), return_nodes=[train_nodes[-1]]).train()
    fxt(x)[train_nodes[-1]].mean().backward()
    assert all(p.grad is not None for p in fxt.parameters())


def test_torch_fx_symbolic_trace(tvm):
    gm = torch.fx.symbolic_trace(tvm)
    assert any(n.op == 'call_function' and getattr(n.target, '__name__', '') == 'ss2d_scan' for n in gm.graph.nodes)
    x = _x(64)
    with torch.no_grad(): torch.testing.assert_close(gm(x), tvm(x))


# -- forward_intermediates -----------------------------------------------------------------------------------
def test_forward_intermediates(tvm):
    x = _x(64)
    with torch.no_grad():
        final, feats = tvm.forward_intermediates(x)
        torch.testing.assert_close(final, tvm.forward_features(x))
        assert [f.shape for f in feats] == [(2, 24, 16, 16), (2, 48, 8, 8), (2, 96, 4, 4), (2, 192, 2, 2)]
        torch.testing.assert_close(feats[-1], final)           # the last stage has no downsample
        # an int takes the last n, a list those indices; negative indices count from the end
        assert [f.shape[1] for f in tvm.forward_intermediates(x, indices=2, intermediates_only=True)] == [96, 192]
        only = tvm.forward_intermediates(x, indices=[0, -2], intermediates_only=True)
        assert isinstance(only, list) and [f.shape[1] for f in only] == [24, 96]
        torch.testing.assert_close(only[1], feats[2])
        normed = tvm.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(normed, tvm.classifier.norm(feats[3]))
        early, ef = tvm.forward_intermediates(x, indices=[1], stop_early=True)
        assert early.shape == (2, 96, 4, 4) and len(ef) == 1     # stopped after stage 1 (and its downsample)
        torch.testing.assert_close(ef[0], feats[1])
    with pytest.raises(ValueError): tvm.forward_intermediates(x, output_fmt='NHWC')


def test_non_square_and_odd_sizes_follow_the_reductions(tvm):
    with torch.no_grad():
        feats = tvm.forward_intermediates(torch.randn(1, 3, 64, 96), intermediates_only=True)
        assert [f.shape[2:] for f in feats] == [(64 // r, 96 // r) for r in (f['reduction'] for f in tvm.feature_info)]
        assert tvm.forward_features(torch.randn(1, 3, 72, 72)).shape == (1, 192, 3, 3)   # ceil(72 / 32)


def test_prune_intermediate_layers():
    x = _x(64)
    full = _model('test_vmamba')
    m = _model('test_vmamba')
    assert m.prune_intermediate_layers(indices=[1]) == [1]
    assert len(m.layers) == 2 and isinstance(m.get_classifier(), nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_intermediates(x, indices=[1], intermediates_only=True)[0],
                                   full.forward_intermediates(x, indices=[1], intermediates_only=True)[0])


# -- TorchScript ---------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
@pytest.mark.xfail(strict=True, raises=torch.jit.frontend.NotSupportedError,
                   reason="timm's test_model_forward_torchscript: vmamba._fused_applies(backend, *ts) takes *args, "
                          "which TorchScript cannot compile (the first blocker it reports; TorchScript is deprecated in torch 2.14)")
def test_torchscript(tvm):
    s = torch.jit.script(tvm)
    x = _x(64)
    with torch.no_grad(): torch.testing.assert_close(s(x), tvm(x))


# -- gradient checkpointing ------------------------------------------------------------------------------------
def test_set_grad_checkpointing_same_outputs_and_grads():
    x = _x(64)
    grads = []
    for ckpt in (False, True):
        m = _model('test_vmamba').train()
        m.set_grad_checkpointing(ckpt)
        assert all(s.grad_checkpointing == ckpt for s in m.layers)
        y = m(x); y.square().mean().backward()
        grads.append((y.detach(), {n: p.grad for n, p in m.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for n, g in grads[0][1].items(): torch.testing.assert_close(grads[1][1][n], g, msg=n)


def test_group_matcher_and_no_weight_decay(tvm):
    from timm.models import group_parameters
    groups = group_parameters(tvm, tvm.group_matcher(coarse=True))
    assert sum(len(v) for v in groups.values()) == len(list(tvm.named_parameters()))
    nwd = tvm.no_weight_decay()
    assert nwd and all(n.endswith(('.A_logs', '.Ds')) for n in nwd)
