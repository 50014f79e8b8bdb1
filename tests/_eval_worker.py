"Worker for tests/test_evaluate.py: evaluates the toy models on noise sets, optionally under torchrun (gloo)."
import os, sys, time
import torch
from ssm_explore.evaluate import evaluate, severity_plan, _NoiseSet, _toy_models

class SlowNoise(_NoiseSet):
    def __getitem__(self, i):
        time.sleep(float(os.environ.get('SLOW', '0')))
        return super().__getitem__(i)

if __name__ == '__main__':
    run_dir = sys.argv[1]
    if int(os.environ.get('WORLD_SIZE', '1')) > 1: torch.distributed.init_process_group('gloo')
    plan = severity_plan(['clean', 'a', 'b', 'c'], [0, 1, 2])
    res = evaluate(_toy_models(), lambda t, s: SlowNoise(n=37, transform=t, severity=s), run_dir, plan, batch_size=5, progress=False)
    if int(os.environ.get('RANK', '0')) == 0: res.to_csv(os.path.join(run_dir, 'final.csv'), index=False)
    if torch.distributed.is_initialized(): torch.distributed.destroy_process_group()
