"The fine-tuning trainer: freezing semantics, resume across the freeze, NaN guard, DDP with 2 gloo processes, the study."
import copy, json, os, subprocess, sys, textwrap
from ssm_explore.checkpoint import read_checkpoint
import numpy as np, pytest, torch, torch.nn as nn, torch.nn.functional as F
from pathlib import Path
from dataclasses import replace
from ssm_explore.finetune import *
from ssm_explore.freezing import *
from ssm_explore.regimes import *
from ssm_explore.finetune_study import *
from ssm_explore.commands.finetune import finetune_cli
from ssm_explore.commands.base import run_command
from ssm_explore.roads import synthetic_split, sample_batch
from ssm_explore.umamba import umamba_bot_small, umamba_enc_small

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
    return TrainConfig(**{**dict(epochs=3, iters_per_epoch=3, batch_size=2, patch=32, progress=False, val_batch_size=4), **kw})


def _rule(): return [GradientRuleFreeze(warmup=4, threshold=0.5)]


def test_resume_across_the_freeze_continues_the_same_curve(tmp_path, data):
    tr, va = data
    a = Trainer(_net(), tr, va, _cfg(), tmp_path/'a', 'a', callbacks=_rule()).fit()
    Trainer(_net(), tr, va, _cfg(), tmp_path/'b', 'b', callbacks=_rule()).fit(stop_after=1)          # stops inside the warm-up
    Trainer(_net(1), tr, va, _cfg(), tmp_path/'b', 'b', callbacks=_rule()).fit(stop_after=1)         # resumes, freezes at step 4
    b = Trainer(_net(2), tr, va, _cfg(), tmp_path/'b', 'b', callbacks=_rule()).fit()                 # resumes with the frozen set
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
        Trainer(_net(), tr, va, _cfg(batch_size=3), tmp_path/'a', 'a', callbacks=_rule()).fit()
    with pytest.raises(ValueError, match='another configuration .*callbacks'):           # nor of two freezing policies
        Trainer(_net(), tr, va, _cfg(), tmp_path/'a', 'a', callbacks=[GradientRuleFreeze(warmup=2)]).fit()


def test_nan_guard_on_gradients_keeps_last_good_checkpoint(tmp_path, data):
    tr, va = data
    net = _net()
    t = Trainer(net, tr, va, _cfg(), tmp_path, 'nan')
    t.fit(stop_after=1)
    good = read_checkpoint(tmp_path/'checkpoint_latest.pth')
    net.decoder.seg_layers[-1].weight.register_hook(lambda g: g*float('inf'))
    with pytest.raises(TrainingDiverged, match=r'non-finite gradient norm .* epoch 1, iteration 0'):
        Trainer(net, tr, va, _cfg(), tmp_path, 'nan').fit()
    after = read_checkpoint(tmp_path/'checkpoint_latest.pth')
    assert after['current_epoch'] == good['current_epoch'] == 1
    assert all(torch.equal(after['network_weights'][k], good['network_weights'][k]) for k in good['network_weights'])


def test_adamw_option_and_poly_schedule(tmp_path, data):
    tr, va = data
    t = Trainer(_net(), tr, va, _cfg(optimizer='adamw', epochs=2, iters_per_epoch=2), tmp_path, 'adamw')
    assert isinstance(t.optimizer, torch.optim.AdamW) and t.cfg.lr == 1e-3
    t.fit()
    assert t.log['lr'] == [pytest.approx(poly_lr(1e-3, e, 2)) for e in range(2)]
    s = Trainer(_net(), tr, va, _cfg(), tmp_path/'sgd', 'sgd').optimizer
    assert isinstance(s, torch.optim.SGD) and s.defaults['nesterov'] and s.defaults['momentum'] == 0.99
    with pytest.raises(ValueError, match='optimizer'): TrainConfig(optimizer='lion')


DDP_SCRIPT = textwrap.dedent('''
    import sys, torch, json
    from ssm_explore.finetune import Trainer, TrainConfig
    from ssm_explore.freezing import GradientRuleFreeze
    from ssm_explore.core import init_distributed
    from ssm_explore.roads import synthetic_split
    from ssm_explore.umamba import umamba_bot_small
    rank, world = init_distributed()
    torch.manual_seed(0)
    net = umamba_bot_small(3, 2, True, patch_size=(32, 32), n_stages=3, base_features=4, max_features=16)
    if rank == 1:   # DDP must broadcast rank 0's initial weights
        with torch.no_grad():
            for p in net.parameters(): p.add_(1.)
    cfg = TrainConfig(epochs=2, iters_per_epoch=2, batch_size=2, patch=32, progress=False)
    t = Trainer(net, synthetic_split('roads', 'train', n=2, size=64), synthetic_split('roads', 'valid', n=1, size=64), cfg, sys.argv[1], 'ddp',
                callbacks=[GradientRuleFreeze(warmup=2)])
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
                      pretrain_epochs=1, freeze_warmup=2, n_train=3, n_val=1, n_test=1, tile=64, speed_rounds=2,
                      autofreeze_window=2, autofreeze_threshold=1e9, autofreeze_max_stages=2, lora_rank=2)
    r = run_finetune_study(tmp_path/'out', cfg=cfg, progress=False)
    out = tmp_path/'out'
    assert set(r['regimes']) == set(REGIMES)
    for k, s in r['regimes'].items():
        assert 0 <= s['final_dice'] <= 1 and 0 <= s['test_dice'] <= 1 and (out/k/'log.csv').exists(), k
    fp = r['regimes']['freeze_prefix']['policy']['rule']
    assert any(n.startswith('encoder.stem.') for n in fp['frozen'])
    assert {'encoder', 'encoder.stem'} & set(fp['no_grad_modules'])     # the stem (or the whole encoder) runs without autograd
    assert set(r['speed']['interleaved']) == set(REGIMES) - {'scratch'}
    assert r['regimes']['autofreeze']['policy']['progressive']['frozen_stages'] == ['encoder.stem', 'encoder.stages.0']
    assert r['regimes']['autofreeze']['bwd_gflops_skipped'] > 0 and r['regimes']['full']['bwd_gflops_skipped'] == 0
    assert r['regimes']['head']['n_trainable'] < r['regimes']['lora']['n_trainable'] < r['regimes']['full']['n_trainable']
    assert (out/'lora'/'checkpoint_merged.pth').exists()    # LoRA merged back into the plain layout
    umamba_bot_small(3, 2, True, **SMALL).load_state_dict(read_checkpoint(out/'lora'/'checkpoint_merged.pth')['network_weights'])
    for f in r['figures'].values(): assert Path(f).stat().st_size > 10_000
    assert json.loads((out/'results.json').read_text())['target_dice'] == r['target_dice']
    assert '| freeze_prefix |' in (out/'summary.md').read_text() and '| lora |' in (out/'summary.md').read_text()
    # the pretrained network is cached, and a re-run resumes every regime instead of training again
    assert len(list((tmp_path/'cache'/'finetune'/'pretrained').iterdir())) == 1
    r2 = run_finetune_study(out, cfg=cfg, progress=False, figures=False)
    assert {k: s['final_dice'] for k, s in r2['regimes'].items()} == {k: s['final_dice'] for k, s in r['regimes'].items()}
    # the fine-tuning regimes started from the pretrained weights (everything but the heads), scratch did not
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


# -- the regimes of the registry, progressive prefix freezing, LoRA ----------------------------------------------------

def _study_cfg(**kw):
    return StudyConfig(**{**dict(patch=32, n_stages=3, base_features=4, max_features=16, batch_size=2, freeze_warmup=1,
                                 autofreeze_window=1, autofreeze_threshold=1e9, autofreeze_max_stages=2, lora_rank=2), **kw})


PEFT_KEEP = {   # what each parameter-efficient regime claims to train (besides the re-initialised heads)
    'lora': lambda n: '.lora_' in n,
    'partial': lambda n: n.startswith('mamba_layer.') and n.split('mamba_layer.')[1] in (
        'mamba.A_log', 'mamba.D', 'mamba.conv1d.weight', 'mamba.conv1d.bias', 'mamba.dt_proj.bias', 'norm.weight', 'norm.bias'),
    'head': lambda n: False,
}


@pytest.mark.parametrize('name', [k for k in REGIMES if k not in ('scratch', 'full')])
def test_each_regime_trains_exactly_the_set_it_claims(tmp_path, data, name):
    tr, va = data
    cfg = _study_cfg(); net = _net()
    cbs = REGIMES[name].setup(net, cfg)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    t = Trainer(net, tr, va, _cfg(epochs=1, iters_per_epoch=3), tmp_path, name, callbacks=cbs); t.fit()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    moved = {n for n, p in net.named_parameters() if not torch.equal(p.detach(), before[n])}
    if name in PEFT_KEEP:
        claimed = {n for n, _ in net.named_parameters() if '.seg_layers.' in n or PEFT_KEEP[name](n)}
        assert trainable == claimed and moved <= claimed, name
        assert all((p.grad is not None) == (n in claimed) for n, p in net.named_parameters())   # the last step: exactly the set
    elif name == 'autofreeze':
        assert cbs[0].frozen_stages == ['encoder.stem', 'encoder.stages.0'] and cbs[0].freeze_steps == [2]
        prefix = {n for n, _ in net.named_parameters() if n.startswith(('encoder.stem.', 'encoder.stages.0.'))}
        assert trainable == set(dict(net.named_parameters())) - prefix
    else:   # the report's rule (+ the fixed prefix)
        f = json.loads((tmp_path/'frozen.json').read_text())
        assert set(t.frozen) == set(f['by_rule']) | set(f['by_module']) and f['warmup_iters'] == 1
        assert (name == 'freeze_prefix') == any(n.startswith('encoder.stem.') for n in f['by_module'])
    assert t.summary()['n_trainable'] == sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_progressive_prefix_skips_the_backward_and_the_graph_of_the_prefix():
    "Once a prefix froze it gets no gradient and runs without autograd; the other gradients are those of full training."
    full, frz = _net(), _net()
    cb = ProgressivePrefixFreeze(window=1, threshold=1e9, max_frozen=3)
    class _T: model, rank = frz, 0          # the little the policy needs of a trainer
    _T.trainable_changed = lambda self: None
    t = _T(); cb.before_fit(t)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))
    for step in range(2):                     # the first window has no change rate yet, the second freezes 3 stages
        frz.zero_grad(); deep_supervision_loss(frz(x), y).backward(); cb.after_step(t, step, x, y)
    assert cb.frozen_stages == ['encoder.stem', 'encoder.stages.0', 'encoder.stages.1']
    modes = []
    record = lambda m, i, o: modes.append((torch.is_grad_enabled(), o.grad_fn))   # blocks inside the frozen stages
    hooks = [blk.register_forward_hook(record) for blk in (frz.encoder.stem[0], frz.encoder.stages[0][0], frz.encoder.stages[1][0])]
    frz.zero_grad(set_to_none=True); full.zero_grad(set_to_none=True)
    for m in (full, frz): deep_supervision_loss(m(x), y).backward()
    for h in hooks: h.remove()
    assert modes == [(False, None)]*3                                     # no graph, no saved activations
    g_full = {n: p.grad for n, p in full.named_parameters()}
    for n, p in frz.named_parameters():
        if n.startswith(('encoder.stem.', 'encoder.stages.0.', 'encoder.stages.1.')): assert p.grad is None, n
    # the rest: same gradients as full training of the same weights (the prefix's weights moved in neither)
    full.load_state_dict(frz.state_dict()); full.zero_grad(set_to_none=True); frz.zero_grad(set_to_none=True)
    for m in (full, frz): deep_supervision_loss(m(x), y).backward()
    for n, p in frz.named_parameters():
        if p.grad is not None: torch.testing.assert_close(p.grad, full.get_parameter(n).grad, rtol=1e-4, atol=1e-6)
    c_full, c_frz = step_cost(full, x, y), step_cost(frz, x, y)
    assert c_frz['bwd_gflops'] < c_full['bwd_gflops'] and c_frz['saved_mib'] < c_full['saved_mib']


def test_progressive_freezing_resumes_to_the_same_run(tmp_path, data):
    tr, va = data
    cb = lambda: [ProgressivePrefixFreeze(window=2, threshold=1e9, max_frozen=2), CostMeter()]
    a = Trainer(_net(), tr, va, _cfg(), tmp_path/'a', 'a', callbacks=cb()); a.fit()
    Trainer(_net(), tr, va, _cfg(), tmp_path/'b', 'b', callbacks=cb()).fit(stop_after=1)   # stops before the freeze (step 4)
    b = Trainer(_net(3), tr, va, _cfg(), tmp_path/'b', 'b', callbacks=cb()); b.fit()
    assert a.callbacks[0].freeze_steps == b.callbacks[0].freeze_steps == [4] and a.frozen == b.frozen
    wa = read_checkpoint(tmp_path/'a'/'checkpoint_final.pth')['network_weights']
    wb = read_checkpoint(tmp_path/'b'/'checkpoint_final.pth')['network_weights']
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r['bwd_gflops_skipped'] > 0 for r in a.iters] == [False]*4 + [True]*5


def test_lora_merge_equals_unmerged_on_both_variants():
    for build in (umamba_bot_small, umamba_enc_small):
        torch.manual_seed(0); net = build(3, 2, True, **SMALL); keys = set(net.state_dict())
        wrapped = add_lora(net, r=3, alpha=6.)
        assert len(wrapped) == 2*sum(1 for n, m in net.named_modules() if type(m).__name__ == 'Mamba')
        with torch.no_grad():
            for n, p in net.named_parameters():
                if 'lora_B' in n: p.normal_(0, 0.2)
        net.eval(); x = torch.randn(2, 3, 32, 32)
        with torch.no_grad(): y0 = net(x); merge_lora(net); y1 = net(x)
        for a, b in zip(y0, y1): torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        assert set(net.state_dict()) == keys and not any(isinstance(m, LoRALinear) for m in net.modules())


def test_grid_runs_both_variants_and_seeds_and_summarises_over_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv('SSM_EXPLORE_CACHE', str(tmp_path/'cache'))
    cfg = StudyConfig(patch=32, n_stages=3, base_features=8, max_features=32, batch_size=2, epochs=1, iters_per_epoch=2,
                      pretrain_epochs=1, n_train=2, n_val=1, n_test=1, tile=64, speed_rounds=1, lora_rank=2,
                      regimes=('full', 'lora'), variants=('bot', 'enc'), seeds=(0, 1))
    g = run_finetune_grid(tmp_path/'out', cfg, progress=False)
    assert sorted(p.name for p in (tmp_path/'out').iterdir() if p.is_dir()) == ['bot_seed0', 'bot_seed1', 'enc_seed0', 'enc_seed1']
    for v in ('bot', 'enc'):
        s = g['summary'][v]['full']['test_dice']
        assert s['n'] == 2 and 0 <= s['mean'] <= 1 and s['sd'] >= 0
        assert g['summary'][v]['lora']['n_trainable']['mean'] < g['summary'][v]['full']['n_trainable']['mean']
    r0 = json.loads((tmp_path/'out'/'enc_seed0'/'results.json').read_text())
    assert r0['config']['variant'] == 'enc' and 'figures' in r0
    md = (tmp_path/'out'/'grid.md').read_text()
    assert '| enc | lora |' in md and '**bot**: target' in md
    t = g['summary']['bot']['full']['test_tiles']
    assert t['n'] == 2*cfg.n_test and t['lo'] <= t['mean'] <= t['hi']
    assert set(g['target']) == {'bot', 'enc'} and set(g['target']['bot']) == {'lora'}
    # a finished run is read back, not retrained or re-measured; a changed configuration is not taken for it
    import ssm_explore.finetune_study as fs
    def boom(*a, **k): raise AssertionError('ran again')
    monkeypatch.setattr(fs, 'run_finetune_study', boom)
    again = run_finetune_grid(tmp_path/'out', cfg, progress=False)
    assert again['summary'] == json.loads(json.dumps(g['summary']))
    assert fs._finished(tmp_path/'out'/'bot_seed0', replace(cfg, variant='bot', seed=0, lora_rank=4)) is None
    # with --pretrained the checkpoint's network decides: only its variant runs
    enc_ck = next(p for p in (tmp_path/'cache'/'finetune'/'pretrained').glob('*/checkpoint_final.pth')
                  if checkpoint_variant(read_checkpoint(p)) == 'enc')
    calls, res = [], json.loads((tmp_path/'out'/'enc_seed0'/'results.json').read_text())
    monkeypatch.setattr(fs, 'run_finetune_study', lambda d, cfg, **k: calls.append((Path(d).name, cfg.variant, k['pretrained'])) or res)
    g2 = run_finetune_grid(tmp_path/'out2', cfg, progress=False, pretrained=enc_ck)
    assert calls == [('enc_seed0', 'enc', enc_ck), ('enc_seed1', 'enc', enc_ck)] and g2['variants'] == ['enc']
