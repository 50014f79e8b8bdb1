"Mamba block: equations in float64, backends, mamba-ssm's names/shapes/dtypes and initialisation."
import copy, json, math, os
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from ssm_explore.mamba import Mamba, causal_conv1d, set_scan_backend

DATA = Path(__file__).parent / 'data'


def equations(p, u, d_conv):
    "The block one time step at a time (float64), from its parameter dict; u: (B, L, d)."
    E, N = p['A_log'].shape
    xz = u @ p['in_proj.weight'].T
    if 'in_proj.bias' in p: xz = xz + p['in_proj.bias']
    x, z = xz.chunk(2, -1)
    xc = []
    for t in range(u.shape[1]):
        acc = p['conv1d.bias'].expand(u.shape[0], E) if 'conv1d.bias' in p else x.new_zeros(u.shape[0], E)
        for k in range(d_conv):
            s = t - (d_conv - 1) + k
            if s >= 0: acc = acc + p['conv1d.weight'][:, 0, k] * x[:, s]
        xc.append(F.silu(acc))
    xc = torch.stack(xc, 1)
    R = p['dt_proj.weight'].shape[1]
    dt, Bm, Cm = (xc @ p['x_proj.weight'].T).split([R, N, N], -1)
    delta = F.softplus(dt @ p['dt_proj.weight'].T + p['dt_proj.bias'])
    A = -torch.exp(p['A_log'])
    h, ys = u.new_zeros(u.shape[0], E, N), []
    for t in range(u.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * Bm[:, t, None, :] * xc[:, t, :, None]
        ys.append(((h * Cm[:, t, None, :]).sum(-1) + p['D'] * xc[:, t]) * F.silu(z[:, t]))
    out = torch.stack(ys, 1) @ p['out_proj.weight'].T
    return out + p['out_proj.bias'] if 'out_proj.bias' in p else out


def perturbed(seed=0, **kw):
    torch.manual_seed(seed)
    m = Mamba(**kw)
    with torch.no_grad():
        for v in m.parameters(): v.add_(0.1 * torch.randn_like(v))
    return m


CONFIGS = [dict(d_model=16), dict(d_model=20, d_state=1, d_conv=2, expand=1), dict(d_model=12, d_state=7, d_conv=5, expand=3, dt_rank=3),
           dict(d_model=24, bias=True, conv_bias=False, dt_init='constant')]


@pytest.mark.parametrize('kw', CONFIGS)
@pytest.mark.parametrize('L', [1, 3, 17])
def test_float64_block_matches_equations(kw, L):
    "In float64 the scan computes in float64: output and every gradient agree with the equations to ~1e-10."
    m = perturbed(**kw).double()
    u = torch.randn(2, L, kw['d_model'], dtype=torch.float64, requires_grad=True)
    out = m(u); out.square().sum().backward()
    p = {k: v.detach().clone().requires_grad_() for k, v in m.named_parameters()}
    u2 = u.detach().clone().requires_grad_()
    ref = equations(p, u2, m.d_conv); ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(u.grad, u2.grad, rtol=1e-8, atol=1e-10)
    for k, v in m.named_parameters():
        torch.testing.assert_close(v.grad, p[k].grad, rtol=1e-8, atol=1e-10, msg=lambda s: f'{k}: {s}')


@pytest.mark.parametrize('kw', CONFIGS[:2])
def test_fast_and_reference_scan_agree_in_float32(kw):
    m = perturbed(1, **kw); r = set_scan_backend(copy.deepcopy(m), 'ref')
    u = torch.randn(3, 40, kw['d_model'])
    u1, u2 = u.clone().requires_grad_(), u.clone().requires_grad_()
    a, b = m(u1), r(u2)
    g = torch.randn_like(a); (a * g).sum().backward(); (b * g).sum().backward()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u1.grad, u2.grad, rtol=1e-4, atol=1e-6)
    for (k, v), w in zip(m.named_parameters(), r.parameters()):
        torch.testing.assert_close(v.grad, w.grad, rtol=1e-4, atol=1e-5 * w.grad.abs().max().item(), msg=lambda s: f'{k}: {s}')


def test_keys_shapes_dtypes_are_mamba_ssm_ones():
    "The official U-Mamba bottleneck block (d_model 512) as listed from a mamba-ssm checkpoint."
    keys = json.loads((DATA / 'umambabot_2d_keys.json').read_text())['keys']
    pre = 'mamba_layer.mamba.'
    official = [(k[len(pre):], s, dt) for k, s, dt, _ in keys if k.startswith(pre)]
    ours = [(k, list(v.shape), str(v.dtype).replace('torch.', '')) for k, v in Mamba(512).state_dict().items()]
    assert ours == official


def test_initialisation_matches_mamba_ssm_distributions():
    torch.manual_seed(0)
    m = Mamba(256, d_state=16)
    E, R = 512, 16
    assert torch.equal(m.A_log.detach(), torch.log(torch.arange(1., 17)).repeat(E, 1))
    assert torch.equal(m.D.detach(), torch.ones(E))
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit
    # nn.Linear / nn.Conv1d defaults: uniform within 1/sqrt(fan_in)
    for lin, fan_in in ((m.in_proj, 256), (m.x_proj, E), (m.out_proj, E)):
        w = lin.weight.detach()
        assert w.abs().max() <= fan_in ** -0.5 and w.abs().max() > 0.95 * fan_in ** -0.5
        assert lin.bias is None
    assert m.conv1d.weight.abs().max() <= 4 ** -0.5 and m.conv1d.bias is not None
    w = m.dt_proj.weight.detach()
    assert w.abs().max() <= R ** -0.5 and w.abs().max() > 0.95 * R ** -0.5
    dt = F.softplus(m.dt_proj.bias.detach().double())
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    # log-uniform: log(dt) is uniform on [log 0.001, log 0.1]; its mean is log 0.01
    assert abs(dt.log().mean().item() - math.log(0.01)) < 0.25
    # floor: with dt_min below the floor, every step is at least the floor
    dtf = F.softplus(Mamba(32, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4).dt_proj.bias.detach().double())
    torch.testing.assert_close(dtf, torch.full_like(dtf, 1e-4), rtol=1e-4, atol=0)


def test_state_dict_round_trip_and_dtype_factory():
    m = perturbed(2, d_model=32)
    m2 = Mamba(32); m2.load_state_dict(m.state_dict(), strict=True)
    u = torch.randn(2, 5, 32)
    assert torch.equal(m(u), m2(u))
    half = Mamba(32, dtype=torch.bfloat16)
    assert half.in_proj.weight.dtype == torch.bfloat16 and half.A_log.dtype == torch.float32 and half.D.dtype == torch.float32
    assert half(u.bfloat16()).dtype == torch.bfloat16


def test_causal_conv_matches_padded_conv_and_rejects_bad_arguments():
    x, w, b = torch.randn(2, 6, 9), torch.randn(6, 1, 4), torch.randn(6)
    torch.testing.assert_close(causal_conv1d(x, w, b), F.conv1d(x, w, b, padding=3, groups=6)[..., :9])
    torch.testing.assert_close(causal_conv1d(x[..., :2], w, b), F.conv1d(x[..., :2], w, b, padding=3, groups=6)[..., :2])
    with pytest.raises(ValueError, match='activation'): causal_conv1d(x, w, b, activation='relu')
    with pytest.raises(ValueError, match='backend must be one of'): Mamba(8, backend='no-such-backend')
    from ssm_explore.scan import scan_backends
    if 'triton' in scan_backends() and not torch.cuda.is_available() and not os.environ.get('TRITON_INTERPRET'):
        with pytest.raises((ValueError, ImportError), match='triton'): Mamba(8, backend='triton')(torch.randn(1, 3, 8))


def test_cuda_backend_asks_for_the_kernels_only_when_requested():
    "backend='cuda' without mamba-ssm / causal-conv1d: an install hint, not a crash at import."
    from ssm_explore.core import has_backend
    if has_backend('causal_conv1d'): pytest.skip('causal-conv1d is installed')
    with pytest.raises(ImportError, match='pip install'):
        causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 1, 4), backend='cuda')
