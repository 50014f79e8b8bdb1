"`ssm-explore bench gpu` without a CUDA device: one clear line, exit status 2, no work started."
import os, subprocess
import pytest

def test_without_cuda_one_line_and_exit_2(tmp_path):
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': ''}                # hides a GPU, if the machine has one
    r = subprocess.run(['ssm-explore', 'bench', 'gpu', '--out', str(tmp_path / 'out')], capture_output=True, text=True,
                       env=env, timeout=120)
    assert (r.returncode, r.stdout) == (2, '')
    assert r.stderr == 'ssm-explore bench gpu: error: no CUDA device: bench gpu needs a GPU; run it where one is available\n'
    assert not (tmp_path / 'out').exists()

def test_listed_among_the_benchmarks():
    r = subprocess.run(['ssm-explore', 'bench', '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and '\n  gpu ' in r.stdout
