"Hidden attention of SS2D: the matrices reproduce the scan (reference and module), are safe under extreme decay, and roll out to valid rows."
from __future__ import annotations
import numpy as np, pytest, torch
from ssm_explore.vmamba import VSSM, SS2D
from ssm_explore.scan import selective_scan_ref
from ssm_explore.hidden_attention import (route_position, scan_operands, scan_inputs, hidden_attention, box_mask,
                                          children_map, attention_rollout, rollout_map, plot_hidden_attention)
try: from ssm_explore.vmamba_views import route_patch
except ImportError: from ssm_explore.explain import route_patch

pytestmark = pytest.mark.usefixtures('one_thread')

def _ops(m): return [o for o in m.modules() if isinstance(o, SS2D)]

def _lively(m, seed=0, A_log=None, dt_bias=None):
    "Random Δ bias, A, D and a larger x_proj, so the scan term is not tiny next to D·u; or fixed A_log / Δ bias."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for op in _ops(m):
            op.dt_projs_bias.uniform_(-1., 1., generator=g); op.A_logs.uniform_(-1., 1.5, generator=g)
            op.Ds.normal_(generator=g); op.x_proj_weight.mul_(30)
            if A_log is not None: op.A_logs.fill_(A_log)
            if dt_bias is not None: op.dt_projs_bias.fill_(dt_bias)
    return m

def _vssm(d_state=1, seed=0, **kw):
    torch.manual_seed(seed)
    return _lively(VSSM(depths=(1, 1, 1, 1), dims=16, num_classes=5, d_state=d_state), seed, **kw).double().eval()

def _x(b=2, h=32, w=48, seed=0):
    return torch.randn(b, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

def _positions(H, W):
    "Route steps of each pixel written out by hand: l = h·W + w, w·H + h, and both reversed. -> (4, H*W)"
    L = H * W
    f = [lambda h, w: h * W + w, lambda h, w: w * H + h, lambda h, w: L - 1 - (h * W + w), lambda h, w: L - 1 - (w * H + h)]
    return torch.tensor([[f[k](h, w) for h in range(H) for w in range(W)] for k in range(4)])

def _close(a, b, rtol):
    "Max |a - b| within rtol of max |b|."
    s = b.abs().max().item()
    assert s > 0 and (a - b).abs().max().item() <= rtol * s, ((a - b).abs().max().item(), s)

def _module_ys(m, op, x):
    "The layer's own per-route outputs (B, 4, Di, L) in scan order with D·u, and its merged output (B, Di, H, W)."
    cap = {}
    with route_patch([op], capture=cap), torch.no_grad(): m(x)
    return cap['ys'].double(), cap['y'].double()

def _ref(o):
    "selective_scan_ref on the route sequences, no skip. -> (B, 4, Di, L)"
    b, K, Di, L = o['u'].shape
    return selective_scan_ref(o['u'].reshape(b, K * Di, L), o['delta'].reshape(b, K * Di, L), o['A'].reshape(K * Di, -1),
                              o['B'], o['C']).view(b, K, Di, L)

def _impulse_alpha(o, b):
    "α of image b from impulse responses of `selective_scan_ref`, scan order. -> (4, Di, t, s)"
    _, K, Di, L = o['u'].shape
    imp = torch.eye(L, dtype=o['u'].dtype)[:, None].expand(L, K * Di, L)
    y = selective_scan_ref(imp, o['delta'][b:b + 1].reshape(1, -1, L).expand(L, -1, -1), o['A'].reshape(K * Di, -1),
                           o['B'][b:b + 1].expand(L, -1, -1, -1), o['C'][b:b + 1].expand(L, -1, -1, -1))
    return y.view(L, K, Di, L).permute(1, 2, 3, 0)

def check_identity(m, x, rtol_ref=1e-12, rtol_mod=1e-5):
    "All-query attention · u == the scan − D·u on every layer: per route vs the reference and the module, merged vs the module."
    for op, u in zip(_ops(m), scan_inputs(m, x)):
        o = scan_operands(op, u)
        al = hidden_attention(op, u, channels=True)['alpha'].flatten(-2)           # (B, Q=L, 4, Di, L)
        y = torch.einsum('bqkdp,bdp->bkdq', al, u.flatten(2).to(al))              # (B, 4, Di, L) at pixels
        pos = _positions(*o['hw'])
        at_pix = lambda ys: torch.stack([ys[:, k][..., pos[k]] for k in range(4)], 1)
        _close(y, at_pix(_ref(o)), rtol_ref)
        ys, ym = _module_ys(m, op, x)
        _close(y, at_pix(ys - o['D'][..., None] * o['u']), rtol_mod)
        _close(y.sum(1), ym.flatten(2) - o['D'].sum(0)[:, None] * u.flatten(2), rtol_mod)

@pytest.mark.parametrize('d_state', [1, 4])
def test_attention_times_input_is_the_scan_without_skip(d_state):
    check_identity(_vssm(d_state), _x())

def test_attention_equals_impulse_responses_of_the_reference_scan():
    m, x = _vssm(2), _x()
    for op, u in zip(_ops(m)[:3], scan_inputs(m, x)):
        o = scan_operands(op, u); pos = _positions(*o['hw'])
        al = hidden_attention(op, u, channels=True)['alpha'].flatten(-2)           # (B, L, 4, Di, L)
        for b in range(2):
            imp = _impulse_alpha(o, b)
            want = torch.stack([imp[k][:, pos[k]][:, :, pos[k]] for k in range(4)]).permute(2, 0, 1, 3)
            _close(al[b], want, 1e-12)

def test_float32_model_matches_its_own_scan():
    m = _vssm().float(); x = _x().float()
    check_identity(m, x, rtol_ref=1e-5, rtol_mod=1e-5)

def test_mini_model_with_cropped_convolutions():
    from ssm_explore.ministudy import create_mini_model
    torch.manual_seed(0)
    m = _lively(create_mini_model('vmamba_mini', 5, image_size=32)).double().eval()
    check_identity(m, _x(1, 32, 32))

def test_extreme_decay_underflows_to_zero_without_nan():
    m, x = _vssm(A_log=9., dt_bias=3.), _x()                                       # Δ·|A| ≈ 3 · 8100 per step
    op, u = _ops(m)[0], scan_inputs(m, x)[0]
    o = scan_operands(op, u)
    assert (o['delta'] * -o['A'][None, ..., 0, None]).min() > 1e4
    al = hidden_attention(op, u, channels=True)['alpha']
    assert torch.isfinite(al).all() and (al == 0).float().mean() > 0.9
    check_identity(m, x)

def test_one_token_map():
    m, x = _vssm(4), _x(2, 4, 4)                                                   # 4x4 px: every stage is 1x1
    for op, u in zip(_ops(m), scan_inputs(m, x)):
        assert u.shape[-2:] == (1, 1)
        o, a = scan_operands(op, u), hidden_attention(op, u, channels=True)['alpha'][:, 0, :, :, 0, 0]   # (B, 4, Di)
        _close(a, torch.einsum('bkn,bkdn->bkd', o['C'][..., 0], o['delta'][..., 0, None] * o['B'][:, :, None, :, 0]), 1e-12)
    check_identity(m, x)

def test_batch_images_keep_their_own_rows_and_chunks_do_not_matter():
    m, x = _vssm(), _x(3)
    op, u = _ops(m)[0], scan_inputs(m, x)[0]
    q = box_mask(8, 12, 3, 4, 2, 3)
    full = hidden_attention(op, u, q, channels=True)
    for b in range(3):
        one = hidden_attention(op, u[b:b + 1], q, channels=True, max_elems=1)        # one query per chunk
        _close(full['alpha'][b:b + 1], one['alpha'], 1e-14)
        _close(full['routes'][b:b + 1], one['routes'], 1e-14)
    s = hidden_attention(op, u, q, agg='signed', channels=True)
    _close(s['merged'], s['alpha'].sum(2).mean(2), 1e-14); _close(s['routes'], s['alpha'].mean(3), 1e-14)

def _rollout_by_hand(m, x, b):
    "The rollout of image b from impulse responses, hand-written route positions and children found by loops."
    R = hw = None
    for op, u in zip(_ops(m), scan_inputs(m, x)):
        o = scan_operands(op, u); H, W = o['hw']; L = H * W; pos = _positions(H, W)
        imp = _impulse_alpha(o, b)
        A = sum(imp[k][:, pos[k]][:, :, pos[k]] for k in range(4)).abs().mean(0)
        A = A / A.sum(1, keepdim=True)
        if R is None: R, hw = torch.eye(L, dtype=A.dtype), (H, W)
        if hw != (H, W):
            P = torch.zeros(L, hw[0] * hw[1], dtype=A.dtype)
            for i in range(hw[0]):
                for j in range(hw[1]): P[(i // 2) * W + j // 2, i * hw[1] + j] = 1
            R, hw = (P / P.sum(1, keepdim=True)) @ R, (H, W)
        R = (0.5 * torch.eye(L, dtype=A.dtype) + 0.5 * A) @ R
    return R

def test_rollout_rows_are_distributions_and_match_a_hand_built_rollout():
    m, x = _vssm(), _x(2, 36, 44)                                                  # 9x11 -> 5x6 -> 3x3 -> 2x2: odd edges
    ro = attention_rollout(m, x)
    R = ro['rollout']
    assert R.shape == (2, 4, 99) and ro['hw'] == (2, 2) and ro['hw_in'] == (9, 11)
    assert R.min() >= 0 and torch.allclose(R.sum(-1), torch.ones(2, 4, dtype=R.dtype), atol=1e-12)
    for b in range(2): _close(R[b], _rollout_by_hand(m, x, b), 1e-10)
    one = attention_rollout(m, x, stages=0)['rollout']
    assert one.shape == (2, 99, 99) and torch.allclose(one.sum(-1), torch.ones(2, 99, dtype=R.dtype), atol=1e-12)
    assert (torch.diagonal(one, dim1=1, dim2=2) >= 0.5 - 1e-12).all()               # the residual half
    assert rollout_map(ro, [0, 3]).shape == (2, 9, 11)
    with pytest.raises(ValueError, match='consecutive'): attention_rollout(m, x, stages=[1, 3])

def test_children_map_odd_sizes():
    P = children_map(5, 3)                                                          # -> 3x2
    assert P.shape == (6, 15) and torch.allclose(P.sum(1), torch.ones(6, dtype=P.dtype))
    assert P[0].nonzero()[:, 0].tolist() == [0, 1, 3, 4] and P[5].nonzero()[:, 0].tolist() == [14]

def test_vmamba_b_stage_one_query_is_small():
    torch.manual_seed(0)
    op, u = SS2D(128).eval(), torch.randn(1, 256, 56, 56)
    r = hidden_attention(op, u, box_mask(56, 56, 20, 30, 2, 2), max_elems=2 ** 22)
    assert r['merged'].shape == (1, 4, 56, 56) and torch.isfinite(r['routes']).all()
    p = route_position(56, 56)[:, 20 * 56 + 30]                                      # route 0 sees only the pixels before
    assert (r['routes'][0, 0, 0].flatten()[p[0] + 1:] == 0).all() and (r['routes'][0, 0, 0].flatten()[:p[0] + 1] > 0).all()

def test_plot_has_five_panels_with_the_queries_marked():
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    m = _vssm().float()
    img = (np.random.default_rng(0).random((1, 32, 48, 3)) * 255).astype(np.uint8)
    op = _ops(m)[0]
    att = hidden_attention(op, scan_inputs(m, img, [op])[0], box_mask(8, 12, 2, 2, 2, 2))
    fig = plot_hidden_attention(img[0], att, title='t')
    assert len(fig.axes) == 5 and all(len(ax.patches) == 4 for ax in fig.axes)
    plt.close(fig)
