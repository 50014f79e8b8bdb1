"Evaluation engine: kill-and-resume gives the same table; 2 gloo processes give the same table as 1."
import os, subprocess, sys, time
from pathlib import Path
import pandas as pd

WORKER = Path(__file__).with_name('_eval_worker.py')

def _run(run_dir, env=None, **kw):
    return subprocess.run([sys.executable, str(WORKER), str(run_dir)], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=300, **kw)

def test_killed_run_resumes_to_the_same_table(tmp_path):
    ref, killed = tmp_path/'ref', tmp_path/'killed'
    r = _run(ref); assert r.returncode == 0, r.stderr
    # start a slowed run, kill it as soon as a few chunks exist (mid-chunk, at an arbitrary point)
    p = subprocess.Popen([sys.executable, str(WORKER), str(killed)], env={**os.environ, 'SLOW': '0.01'},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 120 and len(list(killed.glob('chunks/*/*.csv'))) < 3: time.sleep(0.05)
    time.sleep(0.13); p.kill(); p.wait()
    n_before = len(list(killed.glob('chunks/*/*.csv')))
    assert 3 <= n_before < 2 * 10, n_before      # killed mid-way: some but not all chunks exist
    assert not list(killed.glob('chunks/*/.*.tmp')), 'a torn temporary file was left behind'
    r = _run(killed); assert r.returncode == 0, r.stderr
    a, b = pd.read_csv(ref/'final.csv'), pd.read_csv(killed/'final.csv')
    assert len(a) == 2 * 10 * 37
    pd.testing.assert_frame_equal(a, b)

def test_two_gloo_processes_match_one(tmp_path):
    one, two = tmp_path/'one', tmp_path/'two'
    r = _run(one); assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29561',
                        str(WORKER), str(two)], capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(one/'final.csv'), pd.read_csv(two/'final.csv'))
