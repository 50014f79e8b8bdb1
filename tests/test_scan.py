"Fast selective scan vs the sequential reference: forward, last state and every gradient, many shapes and dtypes."
import math, pytest, torch
from ssm_explore.scan import selective_scan_fn, selective_scan_ref

def make(b=2, d=8, L=33, N=4, G=None, D=True, z=True, bias=True, dtype=torch.float64, seed=0, dt_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    Bs = (b, N, L) if G is None else (b, G, N, L)
    args = [r(b, d, L), r(b, d, L) * dt_scale, -torch.rand(d, N, generator=g, dtype=torch.float64) * 4 - 0.1, r(*Bs), r(*Bs)]
    kw = dict(D=r(d) if D else None, z=r(b, d, L) if z else None, delta_bias=r(d) if bias else None)
    args = [a.to(dtype) for a in args]
    kw = {k: (v.to(dtype) if v is not None else None) for k, v in kw.items()}
    return args, kw

@pytest.mark.parametrize('b,d,L,N,G', [(1, 1, 1, 1, None), (2, 8, 33, 4, None), (2, 8, 70, 1, 4), (1, 6, 129, 16, 3)])
def test_forward_and_grads_match_reference_fp64(b, d, L, N, G):
    args, kw = make(b, d, L, N, G)
    for softplus in (False, True):
        ins = [a.clone().requires_grad_() for a in args] + [v.clone().requires_grad_() for v in kw.values()]
        ins2 = [a.clone().requires_grad_() for a in args] + [v.clone().requires_grad_() for v in kw.values()]
        names = list(kw)
        o1, h1 = selective_scan_fn(*ins[:5], **dict(zip(names, ins[5:])), delta_softplus=softplus, return_last_state=True, backend='torch')
        o2, h2 = selective_scan_ref(*ins2[:5], **dict(zip(names, ins2[5:])), delta_softplus=softplus, return_last_state=True)
        torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(h1, h2, rtol=1e-10, atol=1e-10)
        dy = torch.randn_like(o1)
        g1 = torch.autograd.grad((o1 * dy).sum() + h1.sum(), ins)
        g2 = torch.autograd.grad((o2 * dy).sum() + h2.sum(), ins2)
        for x, y in zip(g1, g2): torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
