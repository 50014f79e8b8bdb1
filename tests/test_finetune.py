"The fine-tuning trainer: freezing semantics, resume across the freeze, NaN guard, DDP with 2 gloo processes, the study."
import copy, json, os, subprocess, sys, textwrap
from ssm_explore.checkpoint import read_checkpoint
import numpy as np, pytest, torch, torch.nn as nn, torch.nn.functional as F
from pathlib import Path
from ssm_explore.finetune import *
from ssm_explore.commands.finetune import finetune_cli
from ssm_explore.commands.base import run_command
from ssm_explore.roads import synthetic_split, sample_batch
from ssm_explore.umamba import umamba_bot_small

pytestmark = pytest.mark.usefixtures('one_thread')   # see conftest.py


SMALL = dict(patch_size=(32, 32), n_stages=3, base_features=4, max_features=16)


def _net(seed=0):
    torch.manual_seed(seed); return umamba_bot_small(3, 2, True, **SMALL)


@pytest.fixture(scope='module')
def data():
    return synthetic_split('roads', 'train', n=3, size=64), synthetic_split('roads', 'valid', n=1, size=64)


def test_frozen_prefix_gives_the_same_gradients_to_the_rest():
    "Freezing the input prefix removes its weight gradients and its graph, and leaves every other gradient unchanged."
    full, frz = _net(), _net()
    names = [n for n, _ in frz.named_parameters() if n.startswith(('encoder.stem.', 'encoder.stages.0.'))]
    wrapped = freeze_parameters(frz, names)
    assert 'encoder.stem' in wrapped and 'encoder.stages.0' in wrapped
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))
    for m in (full, frz): deep_supervision_loss(m(x), y).backward()
    g_full = {n: p.grad for n, p in full.named_parameters()}
    for n, p in frz.named_parameters():
        if n in names: assert p.grad is None, n
        else: torch.testing.assert_close(p.grad, g_full[n], rtol=1e-4, atol=1e-6)
    assert not frz.encoder.stem(x).requires_grad
    unfreeze_all(frz)
    assert all(p.requires_grad for p in frz.parameters()) and frz.encoder.stem(x).requires_grad


def _cfg(**kw):
    return TrainConfig(**{**dict(epochs=3, iters_per_epoch=3, batch_size=2, patch=32, progress=False,
                                 freeze_warmup=4, freeze_threshold=0.5, val_batch_size=4), **kw})


def test_resume_across_the_freeze_continues_the_same_curve(tmp_path, data):
    tr, va = data
    a = Trainer(_net(), tr, va, _cfg(), tmp_path/'a', 'a').fit()
    Trainer(_net(), tr, va, _cfg(), tmp_path/'b', 'b').fit(stop_after=1)          # stops inside the warm-up
    Trainer(_net(1), tr, va, _cfg(), tmp_path/'b', 'b').fit(stop_after=1)         # resumes, freezes at step 4
    b = Trainer(_net(2), tr, va, _cfg(), tmp_path/'b', 'b').fit()                 # resumes with the frozen set
    la = (tmp_path/'a'/'log.csv').read_text().splitlines(); lb = (tmp_path/'b'/'log.csv').read_text().splitlines()
    cols = la[0].split(',')
    keep = [i for i, c in enumerate(cols) if c in ('epoch', 'lr', 'train_loss', 'val_loss', 'pseudo_dice', 'ema_dice', 'n_trainable')]
    assert [[r.split(',')[i] for i in keep] for r in la] == [[r.split(',')[i] for i in keep] for r in lb]
    fa, fb = json.loads((tmp_path/'a'/'frozen.json').read_text()), json.loads((tmp_path/'b'/'frozen.json').read_text())
    assert fa['frozen'] == fb['frozen'] and fa['n_frozen'] > 0
    assert a['n_trainable'] < a['n_params'] and a['n_trainable'] == b['n_trainable']
    wa = read_checkpoint(tmp_path/'a'/'checkpoint_final.pth')['network_weights']
    wb = read_checkpoint(tmp_path/'b'/'checkpoint_final.pth')['network_weights']
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # frozen tensors did not move after the freeze, trainable ones did
    ck = read_checkpoint(tmp_path/'a'/'checkpoint_final.pth')
    assert ck['frozen'] == fa['frozen'] and ck['current_epoch'] == 3
    assert sorted(p.name for p in (tmp_path/'a').glob('*.pth')) == ['checkpoint_best.pth', 'checkpoint_final.pth']   # as nnU-Net
    with pytest.raises(ValueError, match='another configuration .*batch_size: 2 -> 3'):   # no silent mix of two recipes
        Trainer(_net(), tr, va, _cfg(batch_size=3), tmp_path/'a', 'a').fit()


def test_nan_guard_on_gradients_keeps_last_good_checkpoint(tmp_path, data):
    tr, va = data
    net = _net()
    t = Trainer(net, tr, va, _cfg(freeze_warmup=0), tmp_path, 'nan')
    t.fit(stop_after=1)
    good = read_checkpoint(tmp_path/'checkpoint_latest.pth')
    net.decoder.seg_layers[-1].weight.register_hook(lambda g: g*float('inf'))
    with pytest.raises(TrainingDiverged, match=r'non-finite gradient norm .* epoch 1, iteration 0'):
        Trainer(net, tr, va, _cfg(freeze_warmup=0), tmp_path, 'nan').fit()
    after = read_checkpoint(tmp_path/'checkpoint_latest.pth')
    assert after['current_epoch'] == good['current_epoch'] == 1
    assert all(torch.equal(after['network_weights'][k], good['network_weights'][k]) for k in good['network_weights'])


def test_adamw_option_and_poly_schedule(tmp_path, data):
    tr, va = data
    t = Trainer(_net(), tr, va, _cfg(optimizer='adamw', freeze_warmup=0, epochs=2, iters_per_epoch=2), tmp_path, 'adamw')
    assert isinstance(t.optimizer, torch.optim.AdamW) and t.cfg.lr == 1e-3
    t.fit()
    assert t.log['lr'] == [pytest.approx(poly_lr(1e-3, e, 2)) for e in range(2)]
    s = Trainer(_net(), tr, va, _cfg(), tmp_path/'sgd', 'sgd').optimizer
    assert isinstance(s, torch.optim.SGD) and s.defaults['nesterov'] and s.defaults['momentum'] == 0.99
    with pytest.raises(ValueError, match='optimizer'): TrainConfig(optimizer='lion')


DDP_SCRIPT = textwrap.dedent('''
    import sys, torch, json
    from ssm_explore.finetune import Trainer, TrainConfig
    from ssm_explore.core import init_distributed
    from ssm_explore.roads import synthetic_split
    from ssm_explore.umamba import umamba_bot_small
    rank, world = init_distributed()
    torch.manual_seed(0)
    net = umamba_bot_small(3, 2, True, patch_size=(32, 32), n_stages=3, base_features=4, max_features=16)
    if rank == 1:   # DDP must broadcast rank 0's initial weights
        with torch.no_grad():
            for p in net.parameters(): p.add_(1.)
    cfg = TrainConfig(epochs=2, iters_per_epoch=2, batch_size=2, patch=32, progress=False, freeze_warmup=2)
    t = Trainer(net, synthetic_split('roads', 'train', n=2, size=64), synthetic_split('roads', 'valid', n=1, size=64), cfg, sys.argv[1], 'ddp')
    s = t.fit()
    chk = float(sum(p.detach().double().sum() for p in net.parameters()))
    with open(f'{sys.argv[1]}/result_{rank}.json', 'w') as f:   # one file per rank: stdout lines of two ranks can interleave
        json.dump(dict(rank=rank, world=world, checksum=chk, frozen=len(t.frozen), dice=s['final_dice']), f)
    torch.distributed.destroy_process_group()
''')


def test_torchrun_two_gloo_processes(tmp_path):
    script = tmp_path/'ddp_run.py'; script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        str(script), str(tmp_path/'run')], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = [json.loads((tmp_path/'run'/f'result_{k}.json').read_text()) for k in (0, 1)]
    assert sorted(x['rank'] for x in res) == [0, 1] and all(x['world'] == 2 for x in res)
    assert res[0]['checksum'] == pytest.approx(res[1]['checksum'], rel=1e-9)   # replicas stayed in sync
    assert res[0]['frozen'] == res[1]['frozen'] > 0                            # same frozen set on both ranks
    assert res[0]['dice'] == res[1]['dice']                                    # validation reduced over ranks
    assert len((tmp_path/'run'/'log.csv').read_text().splitlines()) == 3       # rank 0 logged 2 epochs


def test_study_end_to_end_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv('SSM_EXPLORE_CACHE', str(tmp_path/'cache'))
    cfg = StudyConfig(patch=32, n_stages=3, base_features=4, max_features=16, batch_size=2, epochs=2, iters_per_epoch=3,
                      pretrain_epochs=1, freeze_warmup=2, n_train=3, n_val=1, n_test=1, tile=64, speed_rounds=2)
    r = run_finetune_study(tmp_path/'out', cfg=cfg, progress=False)
    out = tmp_path/'out'
    assert set(r['regimes']) == {'scratch', 'full', 'freeze', 'freeze_prefix'}
    for k, s in r['regimes'].items():
        assert 0 <= s['final_dice'] <= 1 and 0 <= s['test_dice'] <= 1 and (out/k/'log.csv').exists(), k
    fp = r['frozen']['freeze_prefix']
    assert any(n.startswith('encoder.stem.') for n in fp['frozen'])
    assert {'encoder', 'encoder.stem'} & set(fp['no_grad_modules'])     # the stem (or the whole encoder) runs without autograd
    assert set(r['speed']['interleaved']) == {'full', 'freeze', 'freeze_prefix'}
    for f in r['figures'].values(): assert Path(f).stat().st_size > 10_000
    assert json.loads((out/'results.json').read_text())['target_dice'] == r['target_dice']
    assert '| freeze_prefix |' in (out/'summary.md').read_text()
    # the pretrained network is cached, and a re-run resumes every regime instead of training again
    assert len(list((tmp_path/'cache'/'finetune'/'pretrained').iterdir())) == 1
    r2 = run_finetune_study(out, cfg=cfg, progress=False, figures=False)
    assert {k: s['final_dice'] for k, s in r2['regimes'].items()} == {k: s['final_dice'] for k, s in r['regimes'].items()}
    # the fine-tuning regimes started from the pretrained weights (everything but the heads), scratch did not
    from ssm_explore.checkpoint import read_checkpoint
    pre = read_checkpoint(next((tmp_path/'cache'/'finetune'/'pretrained').iterdir())/'checkpoint_final.pth')   # no unsafe loader needed
    assert pre['init_args']['model_args']['n_stages'] == 3


def test_cli_errors(tmp_path):
    assert run_command('finetune', finetune_cli, ['--out', str(tmp_path), '--pretrained', str(tmp_path/'missing.pth')]) == 2
    assert run_command('finetune', finetune_cli, ['--out', str(tmp_path), '--roads', str(tmp_path)]) == 2


def test_real_data_paths_roads_folder_and_pretrained_file(tmp_path, monkeypatch):
    "--roads reads a dataset folder (here the mirror layout), --pretrained fine-tunes a checkpoint file."
    from ssm_explore.roads import write_synthetic_roads
    from ssm_explore.umamba import small_plans
    monkeypatch.setenv('SSM_EXPLORE_CACHE', str(tmp_path/'cache'))
    root = write_synthetic_roads(tmp_path/'roads', 'mirror', counts=dict(train=2, valid=1, test=1), size=64)
    cfg = StudyConfig(patch=32, n_stages=3, base_features=4, max_features=16, batch_size=2, epochs=1, iters_per_epoch=2,
                      pretrain_epochs=1, freeze_warmup=1, n_train=2, n_val=1, n_test=1, tile=64, speed_rounds=1,
                      regimes=('scratch', 'freeze'))
    pre = pretrain_source(cfg, progress=False)                       # an own checkpoint: init_args carry model_args
    r = run_finetune_study(tmp_path/'out', roads=root, pretrained=pre, cfg=cfg, progress=False, figures=False)
    assert r['data'].startswith('Massachusetts Roads at') and r['pretrained_from'] == str(pre)
    assert set(r['regimes']) == {'scratch', 'freeze'}
    # an nnU-Net checkpoint carries its plan: the network is built from it, heads may differ in class count
    net = umamba_bot_small(3, 2, True, **SMALL)
    torch.save(dict(network_weights=net.state_dict(), init_args=dict(plans=small_plans((32, 32), 3, 4, 16), configuration='2d'),
                    trainer_name='nnUNetTrainerUMambaBot'), tmp_path/'checkpoint_final.pth')
    m, ck = model_from_checkpoint(tmp_path/'checkpoint_final.pth', num_classes=3)
    assert {k: v.shape for k, v in m.state_dict().items() if '.seg_layers.' not in k} == \
           {k: v.shape for k, v in net.state_dict().items() if '.seg_layers.' not in k}
    torch.save(dict(network_weights=net.state_dict()), tmp_path/'bare.pth')
    with pytest.raises(ValueError, match='init_args'): model_from_checkpoint(tmp_path/'bare.pth')
