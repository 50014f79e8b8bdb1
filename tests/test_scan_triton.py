"Triton scan vs the fp64 reference through Triton's CPU interpreter: forward, last state, every gradient; options, shapes, dtypes, extreme decay, determinism."
import json, os, subprocess, sys, time
from itertools import product
from pathlib import Path
import pytest, torch
import ssm_explore.scan_triton as st

pytestmark = pytest.mark.skipif(not st.HAVE_TRITON, reason='Triton is not installed')

OPTIONS = {f'D{int(D)}_z{int(z)}_bias{int(b)}_softplus{int(s)}': dict(make=dict(D=D, z=z, bias=b, softplus=s))
           for D, z, b, s in product([False, True], repeat=4)}
SHAPES = {  # b, d, L, N, G, GC: grouped and ungrouped, constant and mixed B/C, N = 1 and 16, partial channel blocks
    'L1_N1': (1, 1, 1, 1, None, 'same'), 'L1_N16_G2': (2, 4, 1, 16, 2, 'same'), 'N1_G2': (2, 8, 10, 1, 2, 'same'),
    'N16': (1, 4, 9, 16, None, 'same'), 'N16_G2': (2, 4, 7, 16, 2, 'same'), 'G3_partial_blocks': (1, 6, 9, 3, 3, 'same'),
    'constant_BC': (2, 4, 10, 2, 0, 'same'), 'G2_GC4': (1, 8, 9, 3, 2, 4), 'constant_B_ungrouped_C': (2, 4, 8, 2, 0, None),
    'G4_constant_C': (1, 8, 9, 2, 4, 0), 'long_over_many_chunks': (1, 2, 41, 2, None, 'same')}
CASES = {**OPTIONS,
         **{k: dict(make=dict(b=b, d=d, L=L, N=N, G=G, GC=GC, seed=b + d + L)) for k, (b, d, L, N, G, GC) in SHAPES.items()},
         'extreme_decay_softplus': dict(make=dict(b=1, d=4, L=12, N=4, G=2, dt_scale=1e3, a_scale=1e3, a_min=10.)),
         'extreme_decay_plain': dict(make=dict(b=1, d=4, L=12, N=4, G=2, softplus=False, dt_scale=1e3, a_scale=1e3, a_min=10.)),
         'slow_decay_long': dict(make=dict(b=1, d=2, L=60, N=2, softplus=False, dt_scale=1e-3, a_scale=1e-3, a_min=0.)),
         'grad_from_last_state_only': dict(make=dict(b=2, d=4, L=9, N=2, G=None), loss='h'),
         'grad_from_output_only': dict(make=dict(b=1, d=4, L=9, N=2, G=2), loss='out'),
         'several_programs_per_group': dict(make=dict(b=2, d=8, L=7, N=1, G=2), tile=2),
         'several_programs_N2_GC4': dict(make=dict(b=1, d=8, L=7, N=2, G=None, GC=4), tile=4),
         'bfloat16': dict(make=dict(b=1, d=4, L=9, N=3, G=2), dtype='bfloat16'),
         'float16': dict(make=dict(b=1, d=4, L=9, N=3, G=2), dtype='float16')}
TOL = dict(bfloat16=1e-2, float16=2e-3, slow_decay_long=2e-5)

@pytest.fixture(scope='module')
def results():
    "Every case in one fresh process with TRITON_INTERPRET=1 (Triton reads it when it is first imported)."
    worker = Path(__file__).with_name('_scan_triton_worker.py')
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(worker), json.dumps(CASES)], capture_output=True, text=True,
                       env={**os.environ, 'TRITON_INTERPRET': '1'}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res['wall'] = time.perf_counter() - t0
    return res

def test_runs_in_the_interpreter(results):
    assert results['interpreting'] is True

@pytest.mark.parametrize('name', list(CASES))
def test_matches_reference(results, name):
    "Output (u's dtype), last state (fp32) and every gradient (its input's dtype) within tolerance of the fp64 reference."
    r = results[name]
    tol = TOL.get(name, TOL.get(CASES[name].get('dtype'), 1e-5))
    assert r['dtypes_ok'] and r['finite']
    assert r['err'] <= tol, [f'{e:.1e}' for e in r['errs']]

def test_bit_identical_on_two_calls(results):
    assert results['repeat']['programs'] > 1          # dB/dC come from several programs' partials
    assert results['repeat']['equal']

def test_no_grad_path_and_output_alone(results):
    assert results['paths']['equal']

def test_second_order_gradients_through_the_reference(results):
    assert results['second_order']['err'] < 1e-5

def test_cpu_tensors_without_the_interpreter_are_refused():
    "In this process Triton compiles for a GPU: CPU tensors get a clear error, fp64 the torch path."
    a = (torch.randn(1, 2, 3), torch.rand(1, 2, 3), -torch.rand(2, 1), torch.randn(1, 1, 3), torch.randn(1, 1, 3))
    with pytest.raises(ValueError, match='needs CUDA tensors'): st.selective_scan_triton(*a)
    a64 = [t.double() for t in a]
    from ssm_explore.scan import selective_scan_fn
    assert torch.equal(st.selective_scan_triton(*a64), selective_scan_fn(*a64, backend='torch'))

def test_registered_for_cuda_only():
    from ssm_explore.scan import _AUTO_CUDA, _AUTO_CPU, scan_backends
    assert 'triton' in scan_backends() and 'triton' in dict(_AUTO_CUDA) and 'triton' not in dict(_AUTO_CPU)

def test_import_without_triton_is_silent():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import ssm_explore.scan_triton as st; from ssm_explore.scan import scan_backends\n"
            "assert not st.HAVE_TRITON and 'triton' not in scan_backends()")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, '', '')

_LOW = {'u_ptr', 'dl_ptr', 'B_ptr', 'C_ptr', 'D_ptr', 'z_ptr', 'bias_ptr', 'out_ptr', 'dout_ptr', 'du_ptr', 'ddl_ptr', 'dz_ptr'}

@pytest.mark.parametrize('kernel,flag,BD,BN,T,on,low', [
    ('_fwd_kernel', 'SAVE', 32, 1, 64, True, '*bf16'), ('_bwd_kernel', 'HAS_DLAST', 32, 1, 64, True, '*bf16'),
    ('_fwd_kernel', 'SAVE', 16, 16, 7, False, '*fp32'), ('_bwd_kernel', 'HAS_DLAST', 16, 16, 7, False, '*fp16')])
def test_kernels_compile_for_sm90_without_a_gpu(kernel, flag, BD, BN, T, on, low):
    "The compiled (not interpreted) kernels pass Triton's frontend and ptxas for an H100/H200 (sm_90), ahead of time."
    import inspect, triton
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget
    fn = getattr(st, kernel)
    consts = dict(BD=BD, BN=BN, T=T, B_CONST=not on, C_CONST=False, HAS_D=on, HAS_Z=on, HAS_BIAS=on, SOFTPLUS=on, **{flag: on})
    sig = {p: 'constexpr' if p in consts else (low if p in _LOW else '*fp32') if p.endswith('_ptr') else 'i32'
           for p in inspect.signature(fn.fn).parameters}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget('cuda', 90, 32))
    assert len(k.asm['cubin']) > 1000
