"Worker for tests/test_scan_triton.py: runs the Triton scan in Triton's CPU interpreter (TRITON_INTERPRET=1, set by the caller) against the fp64 reference; prints one JSON line of results."
import json, sys, time
import torch
import ssm_explore.scan_triton as st
from ssm_explore.scan import selective_scan_ref

def make(b=1, d=4, L=10, N=2, G=None, GC='same', D=True, z=True, bias=True, softplus=True, seed=0, dt_scale=1.0,
         a_scale=3.0, a_min=0.05):
    "fp64 inputs holding fp32 values; G/GC: groups of B/C (None: (b, N, L); 0: constant (d, N); GC='same': as B)."
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).float().double()
    pos = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64).float().double()
    bc = lambda G: r(d, N) if G == 0 else r(b, N, L) if G is None else r(b, G, N, L)
    delta = r(b, d, L) * dt_scale if softplus else pos(b, d, L) * dt_scale
    A = -(pos(d, N) * a_scale + a_min)
    args = [r(b, d, L), delta, A, bc(G), bc(G if GC == 'same' else GC)]
    kw = dict(D=r(d) if D else None, z=r(b, d, L) if z else None, delta_bias=(r(d) if softplus else pos(d)) if bias else None)
    return args, kw, dict(delta_softplus=softplus)

def cast(args, kw, dtype):
    c = lambda t: None if t is None else t.to(dtype)
    return [c(a) for a in args], {k: c(v) for k, v in kw.items()}

def run(fn, args, kw, opts, loss='both', seed=1):
    "Output, last state and the gradients of a random projection (of out and/or h) for every tensor input."
    ins = [a.clone().requires_grad_() for a in args]
    kwi = {k: None if v is None else v.clone().requires_grad_() for k, v in kw.items()}
    out, h = fn(*ins, **kwi, **opts, return_last_state=True)
    g = torch.Generator().manual_seed(seed)
    w = lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64)
    lo, lh = (out.double() * w(out)).sum(), (h.double() * w(h)).sum()
    total = lo + lh if loss == 'both' else lo if loss == 'out' else lh
    grads = torch.autograd.grad(total, ins + [v for v in kwi.values() if v is not None], allow_unused=True)
    return [out, h] + [torch.zeros_like(x) if gr is None else gr for gr, x in zip(grads, ins + [v for v in kwi.values() if v is not None])]

def rel_errs(xs, ys):
    return [((x.double() - y.double()).abs().max() / y.double().abs().max().clamp(min=1e-30)).item() for x, y in zip(xs, ys)]

def check(case):
    "Max relative error over out, h and every gradient of the Triton scan on `dtype` copies vs the fp64 reference."
    args, kw, opts = make(**case.get('make', {}))
    dtype = getattr(torch, case.get('dtype', 'float32'))
    la, lk = cast(args, kw, dtype)
    if dtype != torch.float32: la[2] = args[2].float()                # A stays fp32, as in mamba-ssm's low-precision use
    loss = case.get('loss', 'both')
    got = run(st.selective_scan_triton, la, lk, opts, loss)
    dtypes_ok = got[0].dtype == dtype and got[1].dtype == torch.float32 and \
        [g.dtype for g in got[2:]] == [t.dtype for t in la + [v for v in lk.values() if v is not None]]
    want = run(selective_scan_ref, *cast(la, lk, torch.float64), opts, loss)
    errs = rel_errs(got, want)
    return dict(err=max(errs), errs=errs, dtypes_ok=dtypes_ok, finite=all(bool(t.isfinite().all()) for t in got))

def repeat():
    "Outputs and gradients of two calls, bit for bit (dB/dC summed over several programs per group, dA/dD/dbias over the batch)."
    args, kw, opts = make(2, 4, 8, 1, None)
    la, lk = cast(args, kw, torch.float32)
    st._TILE = 2                                                      # blocks of 2 channels: 2 programs per group
    try:
        a, b = run(st.selective_scan_triton, la, lk, opts), run(st.selective_scan_triton, la, lk, opts)
        programs = st._geometry(2, 4, 8, 1, la[3], la[4])['R']
    finally: st._TILE = 256
    return dict(equal=all(torch.equal(x, y) for x, y in zip(a, b)), programs=programs)

def paths():
    "The no-grad forward (no checkpoints) equals the autograd one; return_last_state=False returns the output alone."
    args, kw, opts = make(1, 4, 9, 2, 2)
    la, lk = cast(args, kw, torch.float32)
    with_grad = run(st.selective_scan_triton, la, lk, opts)
    with torch.no_grad(): out, h = st.selective_scan_triton(*la, **lk, **opts, return_last_state=True)
    alone = st.selective_scan_triton(*la, **lk, **opts)
    return dict(equal=torch.equal(out, with_grad[0]) and torch.equal(h, with_grad[1]) and torch.equal(alone, out))

def second_order():
    "create_graph=True: the backward recomputes through the reference, so second derivatives equal the reference's."
    args, kw, opts = make(1, 2, 5, 2, None)
    la, lk = cast(args, kw, torch.float32)
    def hess(fn):
        u = la[0].clone().requires_grad_()
        out = fn(u, *la[1:], **lk, **opts)
        g, = torch.autograd.grad(out.square().sum(), [u], create_graph=True)
        return torch.autograd.grad(g.square().sum(), [u])[0]
    return dict(err=rel_errs([hess(st.selective_scan_triton)], [hess(selective_scan_ref)])[0])

if __name__ == '__main__':
    cases = json.loads(sys.argv[1])
    st._CHUNK = 4                         # several chunks and a padded last one on short sequences
    res = dict(interpreting=st._interpreting(), times={})
    for name, case in cases.items():
        t0 = time.perf_counter()
        st._TILE = case.get('tile', 256)                             # a small tile: several programs per B/C group
        res[name] = check(case)
        res['times'][name] = time.perf_counter() - t0
    for fn in (repeat, paths, second_order):
        t0 = time.perf_counter(); res[fn.__name__] = fn(); res['times'][fn.__name__] = time.perf_counter() - t0
    print(json.dumps(res))
