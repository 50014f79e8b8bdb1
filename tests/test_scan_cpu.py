"Compiled CPU scan vs the fp64 reference: forward, last state and every gradient; options, shapes, dtypes, determinism, fallback."
import os, subprocess, sys
import pytest, torch
import ssm_explore.scan_cpu as sc
from ssm_explore.scan import selective_scan_fn, selective_scan_ref
from ssm_explore.scan_cpu import cpu_kernel_available, cpu_kernel_status, selective_scan_cpu

needs_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason=f"compiled CPU scan unavailable: {cpu_kernel_status()}")

def make(b=2, d=8, L=37, N=4, G=2, GC='same', D=True, z=True, bias=True, softplus=True, seed=0, dt_scale=1.0,
         a_scale=3.0, a_min=0.05):
    "fp64 inputs holding fp32 values; G/GC: groups of B/C (None: (b, N, L); 0: constant (d, N); GC='same': as B)."
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).float().double()
    bc = lambda G: r(d, N) if G == 0 else r(b, N, L) if G is None else r(b, G, N, L)
    delta = r(b, d, L) * dt_scale if softplus else (torch.rand(b, d, L, generator=g, dtype=torch.float64) * dt_scale).float().double()
    A = -(torch.rand(d, N, generator=g, dtype=torch.float64) * a_scale + a_min).float().double()
    args = [r(b, d, L), delta, A, bc(G), bc(G if GC == 'same' else GC)]
    kw = dict(D=r(d) if D else None, z=r(b, d, L) if z else None,
              delta_bias=(r(d) if softplus else torch.rand(d, generator=g, dtype=torch.float64).float().double()) if bias else None)
    return args, kw, dict(delta_softplus=softplus)

def cast(args, kw, dtype):
    c = lambda t: None if t is None else t.to(dtype)
    return [c(a) for a in args], {k: c(v) for k, v in kw.items()}

def run(fn, args, kw, opts, seed=1):
    "Output, last state and the gradients of a random projection of both, for every tensor input."
    ins = [a.clone().requires_grad_() for a in args]
    kwi = {k: None if v is None else v.clone().requires_grad_() for k, v in kw.items()}
    out, h = fn(*ins, **kwi, **opts, return_last_state=True)
    g = torch.Generator().manual_seed(seed)
    w = lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64)
    loss = (out.double() * w(out)).sum() + (h.double() * w(h)).sum()
    return [out, h] + list(torch.autograd.grad(loss, ins + [v for v in kwi.values() if v is not None]))

def rel_errs(xs, ys):
    return [((x.double() - y.double()).abs().max() / y.double().abs().max().clamp(min=1e-30)).item() for x, y in zip(xs, ys)]

def check(args, kw, opts, tol=1e-5, dtype=torch.float32):
    "The kernel on `dtype` copies of the inputs against the fp64 reference on the same values."
    want = run(selective_scan_ref, args, kw, opts)
    la, lk = cast(args, kw, dtype)
    if dtype != torch.float32: la[2] = args[2].float()        # A stays fp32, as in mamba-ssm's low-precision use
    got = run(selective_scan_cpu, la, lk, opts)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    assert [g.dtype for g in got[2:]] == [t.dtype for t in la + [v for v in lk.values() if v is not None]]
    wantr = want if dtype == torch.float32 else run(selective_scan_ref, *cast(la, lk, torch.float64), opts)
    errs = rel_errs(got, wantr)
    assert max(errs) <= tol, [f'{e:.1e}' for e in errs]
    return max(errs)

@pytest.fixture
def short_tiles(monkeypatch):
    "Tiles of 8 steps: several tiles, checkpoints between them and a partial last tile, even on short sequences."
    monkeypatch.setattr(sc, '_tile_steps', lambda N: 8)

@needs_kernel
@pytest.mark.parametrize('D', [False, True])
@pytest.mark.parametrize('z', [False, True])
@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('softplus', [False, True])
def test_every_option_matches_reference(short_tiles, D, z, bias, softplus):
    check(*make(D=D, z=z, bias=bias, softplus=softplus))

@needs_kernel
@pytest.mark.parametrize('b,d,L,N,G,GC', [
    (1, 1, 1, 1, None, 'same'), (2, 8, 33, 4, None, 'same'), (2, 8, 70, 1, 2, 'same'), (2, 64, 64, 1, 4, 'same'),
    (1, 32, 40, 16, None, 'same'), (2, 16, 20, 16, 4, 'same'), (1, 6, 29, 16, 3, 'same'), (2, 4, 50, 2, 0, 'same'),
    (2, 16, 30, 3, 2, 4), (2, 8, 25, 2, 0, None), (1, 24, 19, 2, 4, 0), (3, 40, 17, 5, 2, 'same')])
def test_shapes_match_reference(short_tiles, b, d, L, N, G, GC):
    "Grouped (G = 2, 3, 4) and ungrouped, constant and mixed B/C, N = 1 and 16, partial blocks of channels."
    check(*make(b, d, L, N, G, GC, seed=b + d + L))

@needs_kernel
@pytest.mark.parametrize('N,G', [(1, 4), (16, None), (3, 0)])
def test_single_step(N, G):
    check(*make(2, 8, 1, N, G))

@needs_kernel
def test_default_tiles_and_long_sequence():
    "The production tile length (128 steps for N = 1, 32 for N = 16) over several tiles."
    check(*make(1, 32, 300, 1, 4))
    check(*make(1, 16, 100, 16, None))

@needs_kernel
@pytest.mark.parametrize('softplus', [False, True])
def test_extreme_decay(short_tiles, softplus):
    "A very negative and Δ large (decays underflow to 0), and decays ~1 over a long sequence (sums grow)."
    strong = make(1, 16, 40, 4, 2, softplus=softplus, dt_scale=1e3, a_scale=1e3, a_min=10.)
    assert all(t.isfinite().all() for t in run(selective_scan_cpu, *cast(*strong[:2], torch.float32), strong[2]))
    check(*strong)
    check(*make(1, 16, 400, 2, None, softplus=False, dt_scale=1e-3, a_scale=1e-3, a_min=0.), tol=2e-5)

@needs_kernel
@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_low_precision_inputs_compute_in_fp32(short_tiles, dtype, tol):
    "bf16/fp16 inputs: output in u's dtype, last state fp32, gradients in their inputs' dtypes, fp32 accuracy inside."
    check(*make(2, 16, 33, 4, 2), tol=tol, dtype=dtype)

@needs_kernel
def test_non_contiguous_inputs_equal_contiguous():
    args, kw, opts = make(2, 16, 24, 3, 2)
    args, kw = cast(args, kw, torch.float32)
    t = lambda x: x.transpose(-1, -2).contiguous().transpose(-1, -2)          # same values, strided layout
    nc_args = [t(a) for a in args[:2]] + [args[2].t().contiguous().t(), t(args[3]), t(args[4])]
    nc_kw = dict(D=torch.stack([kw['D'], kw['D']], 1)[:, 0], z=t(kw['z']), delta_bias=kw['delta_bias'])
    assert not nc_args[0].is_contiguous() and not nc_args[2].is_contiguous() and not nc_kw['D'].is_contiguous()
    want, got = run(selective_scan_cpu, args, kw, opts), run(selective_scan_cpu, nc_args, nc_kw, opts)
    assert all(torch.equal(x, y) for x, y in zip(got, want))

@needs_kernel
def test_bit_identical_on_1_and_2_threads():
    "dB/dC summed over several tasks per group, dA/dD/dbias over the batch: a fixed order whatever the threads."
    old = torch.get_num_threads()
    res = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            for args, kw, opts in (make(2, 64, 300, 4, 2), make(3, 48, 200, 1, 4), make(2, 32, 50, 2, 0)):
                res.append((n, run(selective_scan_cpu, *cast(args, kw, torch.float32), opts)))
    finally: torch.set_num_threads(old)
    k = len(res) // 3
    for (_, a), (_, b), (_, c) in zip(res[:k], res[k:2 * k], res[2 * k:]):
        assert all(torch.equal(x, y) and torch.equal(x, w) for x, y, w in zip(a, b, c))

@needs_kernel
def test_no_grad_path_and_partial_gradients():
    args, kw, opts = make(2, 16, 30, 4, 2)
    args, kw = cast(args, kw, torch.float32)
    with_grad = run(selective_scan_cpu, args, kw, opts)
    with torch.no_grad(): out, h = selective_scan_cpu(*args, **kw, **opts, return_last_state=True)
    assert torch.equal(out, with_grad[0]) and torch.equal(h, with_grad[1])
    assert torch.equal(selective_scan_cpu(*args, **kw, **opts), out)           # return_last_state=False
    u = args[0].clone().requires_grad_()                                      # a gradient for u only, from h only
    _, h = selective_scan_cpu(u, *args[1:], **kw, **opts, return_last_state=True)
    du, = torch.autograd.grad(h.sum(), [u])
    u2 = args[0].clone().requires_grad_()
    _, h2 = selective_scan_ref(u2, *args[1:], **kw, **opts, return_last_state=True)
    assert rel_errs([du], torch.autograd.grad(h2.sum(), [u2]))[0] < 1e-5

def test_fp64_takes_the_torch_path():
    args, kw, opts = make(1, 8, 20, 2, 2)
    assert torch.equal(selective_scan_cpu(*args, **kw, **opts), selective_scan_fn(*args, **kw, **opts, backend='torch'))

def test_shape_errors():
    args, kw, opts = make(1, 4, 10, 2, None)
    with pytest.raises(ValueError, match='delta'): selective_scan_cpu(args[0], args[1][..., :5], *args[2:])
    with pytest.raises(ValueError, match='groups'): selective_scan_cpu(*args[:3], torch.zeros(1, 3, 2, 10), args[4])

_FALLBACK = '''
import warnings, torch
from ssm_explore.scan import selective_scan_fn
from ssm_explore.scan_cpu import selective_scan_cpu, cpu_kernel_available, cpu_kernel_status
g = torch.Generator().manual_seed(0); r = lambda *s: torch.randn(*s, generator=g)
args = (r(1, 4, 9), r(1, 4, 9), -torch.rand(4, 2, generator=g), r(1, 2, 9), r(1, 2, 9))
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    outs = [selective_scan_cpu(*args, delta_softplus=True) for _ in range(2)]
    ok = cpu_kernel_available()
print(len(w), ok, cpu_kernel_status())
print(all(torch.equal(o, selective_scan_fn(*args, delta_softplus=True, backend='torch')) for o in outs))
'''

def test_without_extension_one_warning_and_torch_results():
    r = subprocess.run([sys.executable, '-c', _FALLBACK], capture_output=True, text=True,
                       env={**os.environ, 'SSM_EXPLORE_NO_EXT': '1'})
    assert r.stdout.splitlines() == ['1 False disabled by SSM_EXPLORE_NO_EXT', 'True'], r.stdout + r.stderr

def test_import_is_silent_and_lazy():
    code = 'import ssm_explore.scan_cpu as s; assert s._STATE["status"] is None'
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, '', '')
