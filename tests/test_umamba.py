"U-Mamba 2D: official keys on the roads plan, plan builders, checkpoint loading, shapes, gradients, benchmark CLI."
import copy, json
from pathlib import Path
import numpy as np
import pytest, torch
import torch.nn as nn
from ssm_explore.umamba import (UMambaBot, UMambaEnc, MambaLayer, umamba_from_plans, roads_plans, small_plans,
                                umamba_bot_small, umamba_enc_small, load_nnunet_checkpoint, checkpoint_state_dict)
from ssm_explore.commands.bench import bench_umamba_cli as bench_cli

DATA = Path(__file__).parent / 'data'


def key_list(model):
    "[name, shape, dtype, alias_of] as in tests/data/*_keys.json (alias_of: first key holding the same tensor)."
    first, out = {}, []
    for k, v in model.state_dict(keep_vars=True).items():
        owner = first.setdefault(id(v), k)
        out.append([k, list(v.shape), str(v.dtype).replace('torch.', ''), None if owner == k else owner])
    return out


@pytest.mark.parametrize('variant,fname', [('bot', 'umambabot_2d_keys.json'), ('enc', 'umambaenc_2d_keys.json')])
def test_roads_plan_gives_the_official_keys_shapes_aliases_and_counts(variant, fname):
    ref = json.loads((DATA / fname).read_text())
    plans = roads_plans()
    before = json.dumps(plans)
    torch.manual_seed(0)
    net = umamba_from_plans(plans, '2d', ref['input_channels'], ref['num_classes'], variant)
    assert json.dumps(plans) == before, 'the plan was modified'
    assert key_list(net) == ref['keys']
    assert sum(p.numel() for p in net.parameters()) == ref['n_params']
    assert len({id(v) for v in net.state_dict(keep_vars=True).values()}) == ref['n_unique_tensors']
    assert sum(p.numel() for n, p in net.named_parameters() if 'mamba' in n) == ref['n_params_in_mamba_layers']
    # the block counts after U-Mamba's changes are those the official constructors leave in the plan
    assert [len(s) for s in net.encoder.stages] == ref['plan']['n_conv_per_stage_encoder']
    assert [len(s) for s in net.decoder.stages] == ref['plan']['n_conv_per_stage_decoder']
    layers = {n: (m.dim, m.channel_token) for n, m in net.named_modules() if isinstance(m, MambaLayer) and not n.startswith('decoder.')}
    assert layers == {k: (v['dim'], v['channel_token']) for k, v in ref['mamba_layers'].items()}


def test_constructors_do_not_mutate_their_arguments_and_accept_scalars():
    enc, dec, feats, strides = [2] * 6, [3] * 5, [4, 8, 8, 16, 16, 16], [1, 2, 2, 2, 2, 1]
    args = copy.deepcopy((enc, dec, feats, strides))
    UMambaBot(1, 6, feats, nn.Conv2d, 3, strides, enc, 2, dec)
    UMambaEnc([32, 32], 1, 6, feats, nn.Conv2d, 3, strides, enc, 2, dec)
    assert (enc, dec, feats, strides) == args
    # scalars repeat per stage, as upstream: stride 2 everywhere, so even the first stage halves the resolution
    net = UMambaBot(1, 3, 8, nn.Conv2d, 3, 2, 2, 4, 2, deep_supervision=True)
    assert [tuple(o.shape) for o in net(torch.randn(1, 1, 16, 16))] == [(1, 4, 8, 8), (1, 4, 4, 4)]


@pytest.mark.parametrize('variant', ['bot', 'enc'])
def test_new_style_plans_build_the_same_network(variant):
    old = small_plans((64, 64), 4, 8, 32)
    c = old['configurations']['2d']
    new = {'configurations': {'2d': {'patch_size': c['patch_size'], 'architecture': {
        'network_class_name': 'dynamic_network_architectures.architectures.unet.ResidualEncoderUNet',
        'arch_kwargs': {'n_stages': 4, 'features_per_stage': [8, 16, 32, 32], 'kernel_sizes': c['conv_kernel_sizes'],
                        'strides': c['pool_op_kernel_sizes'], 'n_conv_per_stage': c['n_conv_per_stage_encoder'],
                        'n_conv_per_stage_decoder': c['n_conv_per_stage_decoder']}}}}}
    torch.manual_seed(3); a = umamba_from_plans(old, '2d', 3, 2, variant)
    torch.manual_seed(3); b = umamba_from_plans(new, '2d', 3, 2, variant)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_plan_errors_name_the_file_and_key(tmp_path):
    p = tmp_path / 'plans.json'
    plans = small_plans(); del plans['configurations']['2d']['conv_kernel_sizes']
    p.write_text(json.dumps(plans))
    with pytest.raises(ValueError, match='conv_kernel_sizes') as e: umamba_from_plans(p, '2d', 3, 2)
    assert 'plans.json' in str(e.value)
    with pytest.raises(ValueError, match="available: \\['2d'\\]"): umamba_from_plans(p, '3d_fullres', 3, 2)
    three_d = small_plans(); three_d['configurations']['2d']['conv_kernel_sizes'] = [[3, 3, 3]] * 5
    with pytest.raises(ValueError, match='2D'): umamba_from_plans(three_d, '2d', 3, 2)
    (tmp_path / 'bad.json').write_text('{')
    with pytest.raises(ValueError, match='bad.json'): umamba_from_plans(tmp_path / 'bad.json', '2d', 3, 2)


@pytest.mark.parametrize('build', [lambda: umamba_bot_small(num_input_channels=2, num_output_classes=3, patch_size=(64, 96), n_stages=4, base_features=8, max_features=32),
                                   lambda: umamba_enc_small(num_input_channels=2, num_output_classes=3, patch_size=(64, 96), n_stages=4, base_features=8, max_features=32)])
def test_every_parameter_gets_a_gradient_and_outputs_are_finite(build):
    torch.manual_seed(0)
    net = build()
    outs = net(torch.randn(2, 2, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 3, 64, 96), (2, 3, 32, 48), (2, 3, 16, 24)]
    sum(o.square().mean() for o in outs).backward()
    for n, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    mamba = [p.grad.abs().sum().item() for n, p in net.named_parameters() if '.mamba.' in n]
    assert mamba and all(g > 0 for g in mamba)


def test_mamba_layer_runs_in_fp32_under_autocast():
    layer = MambaLayer(16)
    x = torch.randn(1, 16, 4, 4)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, layer(x.bfloat16().float()))


def nnunet_checkpoint(net, plans, path):
    "A file in the layout of nnU-Net v2's checkpoint_final.pth (numpy scalars in the logging, as nnU-Net writes)."
    torch.save({'network_weights': net.state_dict(), 'optimizer_state': {'state': {}, 'param_groups': []},
                'grad_scaler_state': None, 'logging': {'ema_fg_dice': [np.float64(0.5)], 'mean_fg_dice': [np.float32(0.4)]},
                '_best_ema': np.float64(0.5), 'current_epoch': 7,
                'init_args': {'plans': plans, 'configuration': '2d', 'fold': 0, 'dataset_json': {'labels': {'background': 0, 'road': 1}}},
                'trainer_name': 'nnUNetTrainerUMambaBot', 'inference_allowed_mirroring_axes': (0, 1)}, path)


def small_bot(**kw):
    return umamba_bot_small(**{**dict(patch_size=(64, 64), n_stages=4, base_features=8, max_features=32), **kw})


def test_strict_loading_of_an_nnunet_checkpoint(tmp_path):
    torch.manual_seed(0); src = small_bot()
    nnunet_checkpoint(src, small_plans((64, 64), 4, 8, 32), tmp_path / 'checkpoint_final.pth')
    torch.manual_seed(1); dst = small_bot()
    rep = load_nnunet_checkpoint(dst, tmp_path / 'checkpoint_final.pth')
    assert rep['skipped'] == [] and rep['ignored'] == [] and len(rep['loaded']) == len(src.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(dst(x), src(x)))
    # our own checkpoints: a bare state dict, torch.compile / DDP prefixes
    sd = {'_orig_mod.' + k: v for k, v in src.state_dict().items()}
    torch.save(sd, tmp_path / 'own.pt')
    load_nnunet_checkpoint(small_bot(), tmp_path / 'own.pt')
    torch.save({'state_dict': {'module.' + k: v for k, v in src.state_dict().items()}}, tmp_path / 'own2.pt')
    load_nnunet_checkpoint(small_bot(), tmp_path / 'own2.pt')


def test_strict_loading_names_bad_keys(tmp_path):
    src = small_bot()
    sd = src.state_dict()
    sd['extra.weight'] = torch.zeros(1)
    sd.pop('mamba_layer.mamba.A_log')
    with pytest.raises(ValueError) as e: load_nnunet_checkpoint(small_bot(), sd)
    msg = str(e.value)
    assert 'mamba_layer.mamba.A_log' in msg and 'extra.weight' in msg and '1 missing' in msg and '1 unexpected' in msg
    with pytest.raises(ValueError, match='another shape'):
        load_nnunet_checkpoint(small_bot(num_input_channels=1), src.state_dict())
    with pytest.raises(ValueError, match='is not a state dict'):
        load_nnunet_checkpoint(small_bot(), {'network_weights': {}})
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='junk.pth'): load_nnunet_checkpoint(small_bot(), tmp_path / 'junk.pth')


def test_finetune_rule_skips_only_segmentation_heads(tmp_path):
    torch.manual_seed(0); src = small_bot()
    nnunet_checkpoint(src, {}, tmp_path / 'pre.pth')
    torch.manual_seed(5); dst = small_bot(num_output_classes=4)
    heads = {k: v.clone() for k, v in dst.state_dict().items() if '.seg_layers.' in k}
    with pytest.raises(ValueError, match='seg_layers'): load_nnunet_checkpoint(dst, tmp_path / 'pre.pth')
    rep = load_nnunet_checkpoint(dst, tmp_path / 'pre.pth', strict='finetune')
    assert rep['skipped'] == sorted(heads)
    sd, ssrc = dst.state_dict(), src.state_dict()
    for k in sd:
        assert torch.equal(sd[k], heads[k] if k in heads else ssrc[k]), k
    # the rule: other channel counts, stage counts or (UMambaEnc) patch sizes are refused with the keys named
    with pytest.raises(ValueError, match='encoder.stem.0.conv1.weight'):
        load_nnunet_checkpoint(small_bot(num_input_channels=1), tmp_path / 'pre.pth', strict='finetune')
    with pytest.raises(ValueError, match='missing'):
        load_nnunet_checkpoint(small_bot(n_stages=5, patch_size=(64, 64)), tmp_path / 'pre.pth', strict='finetune')
    enc = umamba_enc_small(patch_size=(64, 64), n_stages=4, base_features=8, max_features=32)
    with pytest.raises(ValueError, match='encoder.mamba_layers.3'):
        load_nnunet_checkpoint(umamba_enc_small(patch_size=(32, 32), n_stages=4, base_features=8, max_features=32),
                               enc.state_dict(), strict='finetune')
    # extra keys in a pretrained file are ignored under the fine-tuning rule, as in nnU-Net
    extra = {**ssrc, 'something.else': torch.zeros(2)}
    assert load_nnunet_checkpoint(small_bot(), extra, strict='finetune')['ignored'] == ['something.else']


def test_checkpoint_state_dict_unwraps(tmp_path):
    sd = small_bot().state_dict()
    for wrapped in ({'network_weights': sd}, {'model': sd}, {'state_dict': sd}, sd):
        out, _ = checkpoint_state_dict(wrapped)
        assert list(out) == list(sd)


def test_bench_cli_runs_and_reports_a_ratio(tmp_path, capsys):
    assert bench_cli(['--size', '16', '--batch', '1', '--features', '4', '8', '--repeats', '1', '--json', str(tmp_path / 'b.json')]) == 0
    out = capsys.readouterr().out
    assert 'vs the reference: Mamba layer fwd+bwd' in out and 'target >= 10x' in out and 'of the ' in out
    r = json.loads((tmp_path / 'b.json').read_text())
    assert r['tokens'] == 8 * 8 and r['step_ref'] > 0 and r['step_torch'] > 0 and r['ratio'] > 0
    assert r['backends'][-2:] == ['torch', 'ref'] and 0 < r['rest_share_cpu'] <= 1 and r['mamba_ratio'] > 0


def test_smallest_umamba_enc_trains_at_one_thread():
    "4 base features at 1 thread: before `_conv_safe` oneDNN's strided-conv backward corrupted the heap (abort or segfault)."
    import subprocess, sys, textwrap
    code = textwrap.dedent('''
        import torch
        from ssm_explore.umamba import umamba_enc_small
        from ssm_explore.finetune import deep_supervision_loss
        torch.manual_seed(0); torch.set_num_threads(1)
        m = umamba_enc_small(3, 2, True, patch_size=(32, 32), n_stages=3, base_features=4, max_features=16)
        x = torch.randn(2, 3, 32, 32); y = torch.randint(0, 2, (2, 32, 32))
        for i in range(3): deep_supervision_loss(m(x), y).backward()
        print('trained', sum(p.grad.abs().sum().item() > 0 for p in m.parameters() if p.grad is not None))
    ''')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f'exit {r.returncode}: {r.stderr[-2000:]}'
    assert r.stdout.startswith('trained ') and int(r.stdout.split()[1]) > 10
