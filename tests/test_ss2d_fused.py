"The fused SS2D scan (scan_cpu.ss2d_scan_cpu) against its references, in VMamba, and under torch.fx / timm's FX features."
import pytest, torch, timm, torch.fx
import ssm_explore  # noqa: F401  (registers the models)
import ssm_explore.vmamba as V
from ssm_explore.mamba import set_scan_backend
from ssm_explore.scan_cpu import cpu_kernel_available, ss2d_scan_cpu, ss2d_scan_ref

pytestmark = pytest.mark.skipif(not cpu_kernel_available(), reason='the compiled CPU kernel cannot be built here')


def _case(b=2, H=5, W=7, Di=20, N=1, R=3, seed=0):
    "fp64 inputs (u, dt, dt_weight, B, C, A, D, delta_bias) rounded to fp32 values."
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).float().double()
    return [r(b, H, W, Di), r(b, H, W, 4, R), r(4, Di, R) * R ** -0.5 - 0.3, r(b, H, W, 4, N), r(b, H, W, 4, N),
            -torch.rand(4 * Di, N, generator=g, dtype=torch.float64).float().double() * 3, r(4 * Di), r(4 * Di)]


def _grads(fn, args, dtype):
    ins = [a.to(dtype).requires_grad_() for a in args]
    y = fn(*ins)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return [y] + list(torch.autograd.grad((y.double() * w).sum(), ins))


def _rel(x, y): return ((x.double() - y.double()).abs().max() / y.double().abs().max().clamp(min=1e-30)).item()


@pytest.mark.parametrize('shape', [dict(), dict(H=1, W=1, Di=16, R=1), dict(b=1, H=1, W=9, Di=33, N=3, R=8),
                                   dict(b=1, H=9, W=1, Di=8, R=4), dict(H=4, W=3, Di=16, N=2, R=6), dict(H=7, W=5, Di=48)])
def test_fused_matches_the_fp64_reference_forward_and_every_gradient(shape):
    args = _case(**shape)
    got, want = _grads(ss2d_scan_cpu, args, torch.float32), _grads(ss2d_scan_ref, args, torch.float64)
    assert got[0].dtype == torch.float32
    assert max(_rel(g, w) for g, w in zip(got, want)) < 2e-6


def test_fused_matches_the_composite_cross_scan_path_of_vmamba():
    "The same SS2D inputs through cross_scan -> selective_scan_fn -> cross_merge (the path kept as reference)."
    g = torch.Generator().manual_seed(2)
    b, H, W, Di, R, N = 2, 5, 7, 32, 4, 1
    x = torch.randn(b, H, W, Di, generator=g)
    x_dbl = torch.randn(b, H, W, 4, R + 2 * N, generator=g)
    dtw, dtb = torch.randn(4, Di, R, generator=g) * 0.5, torch.randn(4, Di, generator=g) - 2
    A_logs, Ds = torch.randn(4 * Di, N, generator=g) * 0.5, torch.randn(4 * Di, generator=g)
    fused = V.ss2d_scan(x, x_dbl, dtw, dtb, A_logs, Ds, backend='cpu')
    for backend in ('torch', 'ref'):
        comp = V._ss2d_composite(x, x_dbl, dtw, dtb, -torch.exp(A_logs), Ds, backend)
        assert _rel(fused, comp) < 1e-6


def _on_threads(n, args):
    old = torch.get_num_threads(); torch.set_num_threads(n)
    try: return _grads(ss2d_scan_cpu, args, torch.float32)
    finally: torch.set_num_threads(old)


def test_fused_is_bit_identical_on_repeated_calls_and_thread_counts():
    args = _case(b=2, H=6, W=11, Di=40, N=2, R=5)
    one, two, again = _on_threads(1, args), _on_threads(2, args), _on_threads(2, args)
    assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(one, two, again))


def test_fused_second_order_gradients_equal_the_references():
    def second(fn):
        u, *rest = [a.float() for a in _case(b=1, H=3, W=2, Di=4, N=2, seed=3)]
        u.requires_grad_()
        (gu,) = torch.autograd.grad((fn(u, *rest) ** 2).sum(), u, create_graph=True)
        return torch.autograd.grad(gu.pow(2).sum(), u)[0]
    want = second(ss2d_scan_ref)
    assert _rel(second(ss2d_scan_cpu), want) < 1e-5


def _model(**kw):
    torch.manual_seed(0)
    return timm.create_model('test_vmamba', **kw)


def test_vmamba_logits_and_gradients_fused_equal_the_composite_path(monkeypatch):
    m = _model().eval()
    x = torch.randn(2, 3, 80, 64)
    def run(composite):
        with monkeypatch.context() as mp:
            if composite: mp.setattr(V, '_fused_applies', lambda *a: False)   # backend 'cpu': the plain kernel
            m.zero_grad()
            y = m(x)
            y.square().sum().backward()
            return y.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}
    (y1, g1), (y2, g2) = run(False), run(True)
    assert _rel(y1, y2) < 1e-5
    assert max(_rel(g1[n], g2[n]) for n in g1) < 1e-4
    set_scan_backend(m, 'torch')                                                  # the composite path by backend
    with torch.no_grad(): assert _rel(y1, m(x)) < 1e-5


def test_a_patched_cross_merge_takes_the_composite_path(monkeypatch):
    "explain.route_patch swaps vmamba.cross_merge: the fused op must step aside so the patch sees the routes."
    m, seen = _model().eval(), []
    orig = V.cross_merge
    monkeypatch.setattr(V, 'cross_merge', lambda ys, H, W: seen.append(ys.shape) or orig(ys, H, W))
    with torch.no_grad(): m(torch.randn(1, 3, 64, 64))
    assert len(seen) == len([s for s in m.modules() if isinstance(s, V.SS2D)])


def test_fx_symbolic_trace_records_the_scan_as_one_call():
    m = _model().eval()
    gm = torch.fx.symbolic_trace(m)
    calls = [n for n in gm.graph.nodes if n.op == 'call_function' and getattr(n.target, '__name__', '') == 'ss2d_scan']
    assert len(calls) == len([s for s in m.modules() if isinstance(s, V.SS2D)])
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad(): assert torch.equal(gm(x), m(x))


def test_timm_fx_features_equal_the_getter_features():
    fx, getter = _model(features_only=True, feature_cls='fx').eval(), _model(features_only=True).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad(): a, b = fx(x), getter(x)
    assert [t.shape[1] for t in a] == fx.feature_info.channels() == [24, 48, 96, 192]
    assert all(torch.equal(s, t) for s, t in zip(a, b))


def test_timm_fx_forward_and_backward_as_timm_tests_do():
    from timm.models._features_fx import create_feature_extractor, get_graph_node_names
    m = _model().train()
    _, nodes = get_graph_node_names(m)
    fx = create_feature_extractor(m, return_nodes=[nodes[-1]])
    out = fx(torch.randn(2, 3, 64, 64))[nodes[-1]]
    out.mean().backward()
    assert out.shape == (2, 1000)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
