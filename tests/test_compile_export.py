"The scan as a custom op: opcheck, torch.compile(fullgraph=True) and torch.export of VMamba and U-Mamba against eager."
import pytest, torch
import torch.nn as nn
from ssm_explore.scan import _torch_saved
from ssm_explore.scan_cpu import cpu_kernel_available, _cpu_saved
import ssm_explore.vmamba as vm
from ssm_explore.umamba import UMambaBot

OPS = torch.ops.ssm_explore

def scan_args(backend, L=9, D=True, z=True, bias=True, softplus=True, G=2, dtype=torch.float32, grad=True):
    "Op arguments with grouped B (G groups) and ungrouped C; the tensors require gradients."
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)
    ts = [r(2, 4, L), r(2, 4, L), -torch.rand(4, 2, generator=g), r(2, G, 2, L), r(2, 2, L)]
    opt = [r(4) if D else None, r(2, 4, L) if z else None, r(4) if bias else None]
    return (*[t.requires_grad_(grad) if t is not None else None for t in ts + opt], softplus, backend, grad)

TRAIN_BACKEND = 'aot_eager'
BACKENDS = ['torch', 'cpu'] if cpu_kernel_available() else ['torch']

@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('opts', [dict(), dict(D=False, z=False, bias=False, softplus=False), dict(z=False, G=1),
                                  dict(dtype=torch.bfloat16)])
def test_opcheck_forward_and_backward(backend, opts):
    torch.library.opcheck(OPS.selective_scan, scan_args(backend, **opts))

def test_opcheck_without_kernel_of_its_own_and_auto():
    torch.library.opcheck(OPS.selective_scan, scan_args('ref', L=3))
    torch.library.opcheck(OPS.selective_scan, scan_args('auto', grad=False))

@pytest.mark.parametrize('backend,saved', [('torch', _torch_saved), ('cpu', _cpu_saved)][:len(BACKENDS)])
def test_opcheck_backward_op(backend, saved):
    a = scan_args(backend, grad=False)
    out, h, st = OPS.selective_scan(*a[:10], True)
    assert st.shape == saved(*a[:8]).shape and st.dtype == saved(*a[:8]).dtype
    torch.library.opcheck(OPS.selective_scan_bwd, (*a[:10], st, torch.randn_like(out), torch.randn_like(h)))

def grads(model, x, run=None):
    "Gradients of every parameter of `model` after a backward through `run` (default the model itself)."
    model.zero_grad()
    (model if run is None else run)(x).square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

def close(a, b, tol):
    scale = b.abs().max().clamp(min=1e-6)
    return ((a - b).abs().max() / scale).item() <= tol

@pytest.fixture(scope='module')
def vmamba():
    torch.manual_seed(0)
    return vm.test_vmamba(num_classes=5), torch.randn(2, 3, 32, 32)

def test_compile_fullgraph_vmamba_eval_matches_eager(vmamba):
    model, x = vmamba
    model.eval()
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, fullgraph=True)(x)
    assert (got - want).abs().max() <= 1e-5

def test_compile_fullgraph_vmamba_composite_path_in_inference():
    "backend='torch' (cross_scan -> scan -> cross_merge, no fused op): no graph break under no_grad either."
    from ssm_explore.mamba import set_scan_backend
    torch.manual_seed(0)
    model, x = vm.test_vmamba(num_classes=5).eval(), torch.randn(1, 3, 32, 32)
    set_scan_backend(model, 'torch')
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, fullgraph=True)(x)
    assert (got - want).abs().max() <= 1e-5

def test_compile_fullgraph_vmamba_training_gives_the_same_grads(vmamba):
    model, x = vmamba
    model.train()
    want = grads(model, x)
    got = grads(model, x, torch.compile(model, fullgraph=True, backend=TRAIN_BACKEND))
    assert want.keys() == got.keys()
    bad = [n for n in want if not close(got[n], want[n], 1e-4)]
    assert not bad, bad

def umamba():
    torch.manual_seed(0)
    return UMambaBot(1, 3, 8, nn.Conv2d, 3, 2, 2, 4, 2).eval(), torch.randn(1, 1, 16, 16)

def test_compile_fullgraph_umamba_matches_eager():
    model, x = umamba()
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, fullgraph=True)(x)
    assert (got - want).abs().max() <= 1e-5 * max(1, want.abs().max().item())

@pytest.mark.parametrize('name', ['vmamba', 'umamba'])
def test_export_runs_and_matches_eager(name, vmamba):
    model, x = vmamba if name == 'vmamba' else umamba()
    model.eval()
    with torch.no_grad():
        ep = torch.export.export(model, (x,))
        got, want = ep.module()(x), model(x)
    ops = {str(n.target) for g in ep.graph_module.modules() if isinstance(g, torch.fx.GraphModule)  # autocast regions
           for n in g.graph.nodes if n.op == 'call_function'}                                    # are submodules
    assert ops & {'ssm_explore.selective_scan.default', 'ssm_explore.ss2d_scan.default'}, sorted(ops)
    assert (got - want).abs().max() <= 1e-5 * max(1, want.abs().max().item())
