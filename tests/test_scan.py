"Fast selective scan vs the sequential reference: forward, last state and every gradient, many shapes and dtypes."
import math, subprocess, sys
import pytest, torch
from hypothesis import given, settings, strategies as st, HealthCheck
import ssm_explore.scan as scan
from ssm_explore.scan import selective_scan_fn, selective_scan_ref

def make(b=2, d=8, L=33, N=4, G=None, D=True, z=True, bias=True, softplus=True, dtype=torch.float64, seed=0,
         dt_scale=1.0, a_scale=4.0):
    "Random inputs; without softplus delta is made positive (a negative step size makes the scan grow)."
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    Bs = (b, N, L) if G is None else ((d, N) if G == 'const' else (b, G, N, L))
    delta = r(b, d, L) * dt_scale if softplus else torch.rand(b, d, L, generator=g, dtype=torch.float64) * dt_scale
    A = -torch.rand(d, N, generator=g, dtype=torch.float64) * a_scale - 0.05
    args = [r(b, d, L), delta, A, r(*Bs), r(*Bs)]
    kw = dict(D=r(d) if D else None, z=r(b, d, L) if z else None,
              delta_bias=(r(d) if softplus else torch.rand(d, generator=g, dtype=torch.float64)) if bias else None)
    cast = lambda t: None if t is None else (t.to(dtype) if t is not A else t.float() if dtype != torch.float64 else t)
    return [cast(a) for a in args], {k: cast(v) for k, v in kw.items()}, dict(delta_softplus=softplus)

def run(fn, args, kw, opts, seed=1):
    "Output, last state and the gradients of a random projection of both, for every tensor input."
    ins = [a.clone().requires_grad_() for a in args]
    kwi = {k: None if v is None else v.clone().requires_grad_() for k, v in kw.items()}
    out, h = fn(*ins, **kwi, **opts, return_last_state=True)
    g = torch.Generator().manual_seed(seed)
    loss = (out.double() * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum() + \
           (h.double() * torch.randn(h.shape, generator=g, dtype=torch.float64)).sum()
    tensors = ins + [v for v in kwi.values() if v is not None]
    return [out, h] + list(torch.autograd.grad(loss, tensors))

fast = lambda *a, **k: selective_scan_fn(*a, **k, backend='torch')
_REF = {}

def ref_cached(key, args, kw, opts):
    "The fp64 reference results for `key` (the loop is slow; the plan fixtures reuse them)."
    if key not in _REF: _REF[key] = run(selective_scan_ref, args, kw, opts)
    return _REF[key]

def assert_all_close(xs, ys, rtol, atol, names=None):
    for i, (x, y) in enumerate(zip(xs, ys)):
        assert x.dtype == y.dtype and x.shape == y.shape, (i, x.dtype, y.dtype, x.shape, y.shape)
        scale = y.double().abs().max().clamp(min=1e-30)
        err = (x.double() - y.double()).abs().max() / scale
        assert err <= rtol or (x.double() - y.double()).abs().max() <= atol, f"tensor {i}: relative error {err:.2e}"

@pytest.fixture(params=['one_chunk', 'chunks', 'chunks_blocks'])
def plan(request, monkeypatch):
    "Force the three regimes of the chunked scan on small inputs: one chunk; several chunks; several time blocks."
    slab, block = dict(one_chunk=(1 << 15, 1 << 22), chunks=(512, 1 << 22), chunks_blocks=(512, 300))[request.param]
    monkeypatch.setattr(scan, '_SLAB', slab); monkeypatch.setattr(scan, '_BLOCK', block)
    return request.param

@pytest.mark.parametrize('b,d,L,N,G', [(1, 1, 1, 1, None), (2, 8, 33, 4, None), (2, 8, 70, 1, 4), (1, 6, 129, 16, 3),
                                       (2, 4, 50, 2, 'const')])
@pytest.mark.parametrize('softplus', [False, True])
def test_fp64_matches_reference(plan, b, d, L, N, G, softplus):
    args, kw, opts = make(b, d, L, N, G, softplus=softplus)
    want = ref_cached(('fp64', b, d, L, N, G, softplus), args, kw, opts)
    assert_all_close(run(fast, args, kw, opts), want, 1e-10, 1e-12)

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(b=st.integers(1, 3), H=st.integers(1, 5), G=st.sampled_from([None, 1, 2, 4]), L=st.integers(1, 70),
       N=st.sampled_from([1, 2, 5, 16]), D=st.booleans(), z=st.booleans(), bias=st.booleans(), softplus=st.booleans(),
       slab=st.sampled_from([16, 256, 1 << 15]), block=st.sampled_from([40, 1 << 22]), seed=st.integers(0, 1000))
def test_random_shapes_match_reference(b, H, G, L, N, D, z, bias, softplus, slab, block, seed):
    d = H * (G or 1)
    old = scan._SLAB, scan._BLOCK
    scan._SLAB, scan._BLOCK = slab, block
    try:
        args, kw, opts = make(b, d, L, N, G, D, z, bias, softplus, seed=seed)
        assert_all_close(run(fast, args, kw, opts), run(selective_scan_ref, args, kw, opts), 1e-9, 1e-11)
    finally: scan._SLAB, scan._BLOCK = old

@pytest.mark.parametrize('dtype,rtol', [(torch.float32, 2e-4), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_low_precision_inputs_compute_in_fp32(plan, dtype, rtol):
    "Inputs in fp32/bf16/fp16: the output has u's dtype, and matches the fp64 computation on the same rounded inputs."
    args, kw, opts = make(2, 8, 65, 4, 2, dtype=dtype)
    got = run(fast, args, kw, opts)
    want = ref_cached(('lowp', dtype), [a.double() for a in args], {k: v.double() for k, v in kw.items()}, opts)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    assert_all_close([x.double() for x in got], want, rtol, 0)
    assert selective_scan_ref(*args, **kw, **opts).dtype == dtype   # the reference also returns u's dtype

@pytest.mark.parametrize('scale', [1e2, 1e4])
def test_extreme_decay_and_long_sequences(plan, scale):
    "Strong decay (|ΔA| up to ~1e5 per step) and long sequences: finite, and equal to the fp64 loop."
    args, kw, opts = make(1, 4, 1500, 4, None, dt_scale=scale, seed=3)
    want = ref_cached(('extreme', scale), args, kw, opts)
    got32 = run(fast, [a.float() for a in args], {k: v.float() for k, v in kw.items()}, opts)
    assert all(t.isfinite().all() for t in got32)
    assert_all_close([x.double() for x in got32], want, 1e-4, 0)

def test_slow_decay_long_sequence_fp32():
    "Tiny decay over 2048 steps: sums that grow large stay accurate in fp32 (no exponentiated cumulative sums)."
    args, kw, opts = make(1, 8, 2048, 2, None, softplus=False, dt_scale=1e-3, a_scale=1e-3)
    want = run(selective_scan_ref, args, kw, opts)
    got = run(fast, [a.float() for a in args], {k: v.float() for k, v in kw.items()}, opts)
    assert_all_close([x.double() for x in got], want, 1e-4, 0)

def test_gradcheck_small():
    args, kw, opts = make(1, 4, 9, 2, 2)
    torch.manual_seed(0)
    old = scan._SLAB; scan._SLAB = 8
    try:
        f = lambda *t: fast(*t[:5], D=t[5], z=t[6], delta_bias=t[7], **opts, return_last_state=True)
        assert torch.autograd.gradcheck(f, [a.clone().requires_grad_() for a in args + list(kw.values())])
    finally: scan._SLAB = old

def test_backends_and_errors():
    args, kw, opts = make(1, 4, 10, 2, None)
    out = selective_scan_fn(*args, **kw, **opts)                      # auto -> torch on CPU
    torch.testing.assert_close(out, selective_scan_fn(*args, **kw, **opts, backend='ref'))
    with pytest.raises(ValueError, match='unknown backend'): selective_scan_fn(*args, backend='gpu')
    from ssm_explore.core import has_backend
    if not has_backend('mamba_ssm'):
        with pytest.raises(ImportError, match='pip install'): selective_scan_fn(*args, backend='cuda')
    with pytest.raises(ValueError, match='delta'): selective_scan_fn(args[0], args[1][..., :5], *args[2:])
    with pytest.raises(ValueError, match='groups'): selective_scan_fn(*args[:3], torch.zeros(1, 3, 2, 10), args[4])

def test_import_is_silent():
    r = subprocess.run([sys.executable, '-c', 'import ssm_explore.scan'], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == '' and r.stderr == ''
