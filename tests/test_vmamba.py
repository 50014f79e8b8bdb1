"VMamba: checkpoint layout of the released variants, a from-the-equations reference, checkpoint loading, timm surface."
import json, math, pickle, sys, types
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import ssm_explore.vmamba as V
from ssm_explore.scan import selective_scan_ref

DATA = Path(__file__).parent / 'data'
RELEASED = {'vmamba_tiny': 30_249_064, 'vmamba_small': 50_147_752, 'vmamba_base': 88_557_800}


# -- keys, shapes and parameter counts of the released variants ---------------------------------------------
@pytest.mark.parametrize('name', sorted(RELEASED))
def test_state_dict_matches_official_keys(name):
    ref = json.loads((DATA / f'{name}_keys.json').read_text())
    with torch.device('meta'): m = timm.create_model(name)
    sd = m.state_dict()
    assert list(sd) == list(ref)                                    # same names, same order
    assert {k: list(v.shape) for k, v in sd.items()} == ref
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert sum(p.numel() for p in m.parameters()) == RELEASED[name]
    assert m.pretrained_cfg['url'].endswith(V.VARIANTS[name]['file'])


def test_defaults_are_the_released_design():
    with torch.device('meta'): m = V.VSSM(depths=[2, 2, 15, 2], dims=128)
    assert sum(p.numel() for p in m.parameters()) == RELEASED['vmamba_base']
    op = m.layers[0].blocks[0].op
    assert (op.d_state, op.dt_rank, op.d_inner, op.conv2d.bias) == (1, 8, 256, None)


# -- an independent transcription of the forward pass (NCHW, einsum, sequential scan) ------------------------
def _ln2d(x, ln): return F.layer_norm(x.permute(0, 2, 3, 1), ln.normalized_shape, ln.weight, ln.bias, 1e-5).permute(0, 3, 1, 2)
def _conv1x1(x, lin): return torch.einsum('bchw,oc->bohw', x, lin.weight) + (0 if lin.bias is None else lin.bias[:, None, None])

def ss2d_reference(op, x):
    "SS2D written from the equations: routes (B, 4, Di, L), split [dt|B|C], loop scan, summed merge."
    B_, _, H, W = x.shape
    L, N, R = H * W, op.d_state, op.dt_rank
    x = F.silu(F.conv2d(_conv1x1(x, op.in_proj), op.conv2d.weight, op.conv2d.bias, padding=1, groups=op.d_inner))
    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    xs = torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], 1)                       # (B, 4, Di, L)
    dbl = torch.einsum('bkdl,kcd->bkcl', xs, op.x_proj_weight)
    dt, Bs, Cs = dbl[:, :, :R], dbl[:, :, R:R + N], dbl[:, :, R + N:]
    dt = torch.einsum('bkrl,kdr->bkdl', dt, op.dt_projs_weight)
    y = selective_scan_ref(xs.reshape(B_, -1, L), dt.reshape(B_, -1, L), -op.A_logs.exp(), Bs, Cs, op.Ds,
                           delta_bias=op.dt_projs_bias.reshape(-1), delta_softplus=True).view(B_, 4, -1, L)
    y = (y[:, 0] + y[:, 2].flip(-1)).view(B_, -1, H, W) + (y[:, 1] + y[:, 3].flip(-1)).view(B_, -1, W, H).transpose(2, 3)
    return _conv1x1(_ln2d(y, op.out_norm), op.out_proj)

def vssm_reference(m, x):
    pe = m.patch_embed
    x = _ln2d(F.conv2d(x, pe[0].weight, pe[0].bias, stride=2, padding=1), pe[1])
    x = _ln2d(F.conv2d(F.gelu(x), pe[3].weight, pe[3].bias, stride=2, padding=1), pe[4])
    for stage in m.layers:
        for blk in stage.blocks:
            x = x + ss2d_reference(blk.op, _ln2d(x, blk.norm))
            x = x + _conv1x1(F.gelu(_conv1x1(_ln2d(x, blk.norm2), blk.mlp.fc1)), blk.mlp.fc2)
        if not isinstance(stage.downsample, torch.nn.Identity):
            ds = stage.downsample
            x = _ln2d(F.conv2d(x, ds[0].weight, ds[0].bias, stride=2, padding=1), ds[1])
    return m.classifier.head(_ln2d(x, m.classifier.norm).mean((2, 3)))

def randomise(m, seed=0):
    "Strong random weights: the default init (A_logs 0, Ds 1, LN 1/0) hides mapping mistakes."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if n.endswith('A_logs'): p.copy_(0.5 * r)
            elif n.endswith(('Ds', 'bias')): p.copy_(0.3 * r - (1 if n.endswith('dt_projs_bias') else 0))
            elif p.dim() == 1: p.copy_(1 + 0.3 * r)                                   # norm weights
            else: p.copy_(r / math.sqrt(p.shape[-1] if 'proj' in n and p.dim() == 3 else p[0].numel()))
    return m

@pytest.mark.parametrize('size', [(32, 32), (48, 32), (37, 53)])    # square, non-square, odd
def test_forward_matches_reference_transcription(size):
    torch.manual_seed(0)
    m = randomise(V.VSSM(depths=[1, 1, 2, 1], dims=16, d_state=2, num_classes=7)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad(): ours, ref = m(x), vssm_reference(m, x)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_cross_merge_is_the_adjoint_of_cross_scan_on_non_square_maps():
    x, y = torch.randn(2, 3, 5, 4), torch.randn(15, 2, 4, 4)
    lhs = (V.cross_scan(x) * y).sum()
    rhs = (x * V.cross_merge(y, 3, 5)).sum()
    torch.testing.assert_close(lhs, rhs)


# -- gradients, autocast ----------------------------------------------------------------------------------------
def test_backward_reaches_every_parameter_and_grad_checkpointing_agrees():
    torch.manual_seed(0)
    m = timm.create_model('test_vmamba', num_classes=5, drop_path_rate=0.1)
    x = torch.randn(2, 3, 40, 56)
    torch.manual_seed(1); m(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    m.zero_grad(); m.set_grad_checkpointing(True)
    torch.manual_seed(1); m(x).square().sum().backward()
    for n, p in m.named_parameters(): torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)


def test_bf16_autocast_runs_the_scan_in_fp32():
    torch.manual_seed(0)
    m = timm.create_model('test_vmamba').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        with torch.autocast('cpu', dtype=torch.bfloat16): out = m(x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


# -- checkpoints ----------------------------------------------------------------------------------------------
def _official_file(path, model, ema=None, conv_1x1=False):
    "An official-format training checkpoint (`tests/standins.py`): a pickled yacs CfgNode config, optimiser state, EMA."
    import standins as S
    return S.official_vmamba_pth(path, model.state_dict(), ema.state_dict() if ema is not None else None,
                                 conv_4d=('in_proj.weight', 'out_proj.weight', 'fc2.weight') if conv_1x1 else False)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_official_file_loads_model_or_ema(tmp_path):
    src, ema = timm.create_model('test_vmamba'), timm.create_model('test_vmamba')
    path = _official_file(tmp_path / 'ckpt.pth', src, ema=ema, conv_1x1=True)
    assert _same(V.load_checkpoint(timm.create_model('test_vmamba'), path), src)
    assert _same(V.load_checkpoint(timm.create_model('test_vmamba'), path, use_ema=True), ema)
    bare = tmp_path / 'bare.pth'; torch.save(src.state_dict(), bare)
    assert _same(V.load_checkpoint(timm.create_model('test_vmamba'), bare), src)
    with pytest.raises(V.CheckpointMismatch, match='model_ema'):
        V.load_checkpoint(timm.create_model('test_vmamba'), bare, use_ema=True)


def test_mismatch_lists_keys_and_names_the_variant(tmp_path):
    path = _official_file(tmp_path / 'ckpt.pth', timm.create_model('test_vmamba'))
    with pytest.raises(V.CheckpointMismatch) as e:
        V.load_checkpoint(V.VSSM(depths=[1, 1, 2, 1], dims=32), path)
    msg = str(e.value)
    assert 'ckpt.pth' in msg and 'wrong shape' in msg and 'patch_embed.0.weight' in msg
    assert 'looks like test_vmamba' in msg
    with pytest.raises(V.CheckpointMismatch, match='unexpected 1'):
        V.checkpoint_filter_fn({**timm.create_model('test_vmamba').state_dict(), 'extra.weight': torch.zeros(1)},
                               timm.create_model('test_vmamba'))
    with pytest.raises(V.CheckpointMismatch, match='does not look like a VMamba'):
        V.checkpoint_filter_fn({'fc.weight': torch.zeros(2, 2)}, timm.create_model('test_vmamba'))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        V.load_checkpoint(timm.create_model('test_vmamba'), tmp_path / 'nope.pth')


def test_timm_pretrained_route_with_local_file(tmp_path):
    "pretrained=True with a local `file` works offline: our loader (custom_load=True) for official files, filter_fn for bare ones."
    arch = dict(depths=(1, 1, 1, 1), dims=16)                   # the released cfg, a small architecture
    src = timm.create_model('vmamba_tiny', **arch)
    path = _official_file(tmp_path / V.VARIANTS['vmamba_tiny']['file'], src)
    overlay = dict(file=str(path), custom_load=True)            # timm resets custom_load when a file is given
    m = timm.create_model('vmamba_tiny', pretrained=True, pretrained_cfg_overlay=overlay, **arch)
    assert _same(m, src)
    ft = timm.create_model('vmamba_tiny', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=3, **arch)
    assert ft.get_classifier().out_features == 3
    assert torch.equal(ft.patch_embed[0].weight, src.patch_embed[0].weight)
    small = timm.create_model('test_vmamba'); bare = tmp_path / 'bare.pth'; torch.save(small.state_dict(), bare)
    assert _same(timm.create_model('test_vmamba', pretrained=True, pretrained_cfg_overlay=dict(file=str(bare))), small)


# -- timm surface and the registry sweep ---------------------------------------------------------------------
@pytest.mark.parametrize('name', ['test_vmamba', 'vmamba_tiny', 'vmamba_small', 'vmamba_base'])
def test_registry_sweep_build_forward_no_nan(name):
    torch.manual_seed(0)
    m = timm.create_model(name).eval()
    with torch.no_grad(): y = m(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


def test_timm_surface():
    m = timm.create_model('test_vmamba', num_classes=4).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (2, 192, 2, 3)
        assert m.forward_head(f, pre_logits=True).shape == (2, 192)
        torch.testing.assert_close(m.forward_head(f), m(x))
    assert [i['num_chs'] for i in m.feature_info] == [24, 48, 96, 192]
    assert m.no_weight_decay() and all(n.endswith(('A_logs', 'Ds')) for n in m.no_weight_decay())
    assert isinstance(m.get_classifier(), torch.nn.Linear)
    m.reset_classifier(0)
    with torch.no_grad(): assert m(x).shape == (2, 192)
    fm = timm.create_model('test_vmamba', features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad(): feats = fm(x)
    assert [t.shape for t in feats] == [(2, 48, 8, 12), (2, 192, 2, 3)]
    data = timm.data.resolve_model_data_config(timm.create_model('vmamba_base', pretrained=False))
    assert (data['crop_pct'], data['interpolation'], data['mean']) == (0.875, 'bicubic', (0.485, 0.456, 0.406))


def test_bench_cli_runs(capsys):
    from ssm_explore.commands.bench import bench_vmamba_cli, _memory_probe
    assert bench_vmamba_cli(['--models', 'test_vmamba,test_convnext', '--batch', '1', '--size', '64', '--rounds', '1',
                        '--no-memory']) == 0
    out = capsys.readouterr().out
    assert 'ratio test_vmamba / test_convnext' in out and 'peak MiB' in out
    mem = _memory_probe('test_vmamba', 2, 64, 1)          # what each child process of the full benchmark runs
    # resident-memory growth can dip slightly below zero when pages are returned during the forward
    if Path('/proc/self/status').exists(): assert mem['peak_mib'] > 0 and mem['forward_mib'] > -1.0
