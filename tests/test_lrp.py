"LRP rules (MambaLRP / AttnLRP): conservation on VMamba, the Mamba block, Swin and ConvNeXt; exact restoration; maps."
from __future__ import annotations
import copy
import numpy as np, pytest, torch, torch.nn as nn
from ssm_explore.lrp import (ALL_RULES, LRP_FORWARDS, RULES, conservation_error, conservation_terms, lrp_maps,
                             lrp_relevance, lrp_rules, offsets, rule_ablation, _jitter, _few_steps)
from ssm_explore.mamba import Mamba, set_scan_backend
from ssm_explore.ministudy import create_mini_model
from ssm_explore.umamba import MambaLayer
from ssm_explore.vmamba import VSSM

pytestmark = pytest.mark.usefixtures('one_thread')

def _mini(name:str, seed:int=0)->nn.Module:
    torch.manual_seed(seed)
    return _jitter(create_mini_model(name, 10, image_size=32), seed=seed).eval()

@pytest.fixture(scope='module')
def vmamba_mini(): return _mini('vmamba_mini')

@pytest.fixture(scope='module')
def images(): return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))

def _mamba_block(backend:str)->nn.Module:
    torch.manual_seed(0)
    return _jitter(Mamba(12, d_state=4, d_conv=3, backend=backend, bias=True))

def _seq(): return torch.randn(2, 7, 12, generator=torch.Generator().manual_seed(1))

def _last(out): return out[:, -1, 0]

def _cases(vmamba_mini, images)->dict:
    torch.manual_seed(2)
    return {'vmamba_mini': (vmamba_mini, images, [1, 4, 9]),
            'vmamba_mini trained': (_few_steps(create_mini_model('vmamba_mini', 10, image_size=32), steps=3), images, [0, 1, 2]),
            'vssm': (_jitter(VSSM(depths=(1, 1, 2, 1), dims=16, num_classes=5)).eval(), images, 3),
            'mamba ref': (_mamba_block('ref'), _seq(), _last), 'mamba torch': (_mamba_block('torch'), _seq(), _last),
            'mamba_layer': (_jitter(set_scan_backend(MambaLayer(16, d_state=4), 'ref')), torch.randn(2, 16, 4, 5), lambda o: o[:, 2, 1, 3]),
            'swin_mini': (_mini('swin_mini'), images, [1, 4, 9]), 'convnext_mini': (_mini('convnext_mini'), images, [1, 4, 9])}

def test_rules_conserve_and_plain_gradient_x_input_does_not(vmamba_mini, images):
    cases = _cases(vmamba_mini, images)
    for name, (net, x, t) in cases.items():
        r_in, r_b, y = conservation_terms(net, x, t)
        assert r_in.shape == r_b.shape == y.shape == (len(x),), name
        assert ((r_in + r_b - y).abs() <= 1e-4 * y.abs()).all(), (name, r_in, r_b, y)
        assert conservation_error(net, x, t, rules=()).max() > 1e-2, name   # the check can fail (some samples by luck less)

def test_each_missing_rule_breaks_conservation_where_it_applies(vmamba_mini, images):
    table = rule_ablation({'vmamba': (vmamba_mini, images[:2], [1, 4]), 'mamba': (_mamba_block('ref'), _seq(), _last)})
    assert (table.loc['all rules'] <= 1e-4).all()
    for rule in ('silu', 'gelu', 'norm'): assert table.loc[f'without {rule}', 'vmamba'] > 1e-3, rule
    for rule in ('scan', 'silu', 'gate'): assert table.loc[f'without {rule}', 'mamba'] > 1e-3, rule
    assert table.loc['without softmax', 'vmamba'] <= 1e-4   # no attention in VMamba: the rule is not used

def test_restoration_is_exact(vmamba_mini, images):
    net = copy.deepcopy(vmamba_mini).train()
    def out_and_grads(x):
        net.zero_grad(set_to_none=True)
        x = x.clone().requires_grad_()
        y = net.eval()(x); y[:, 0].sum().backward()
        return y.detach(), x.grad, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    y0, gx0, gp0 = out_and_grads(images)
    sd0 = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    with lrp_rules(net):
        assert not net.training and any('forward' in m.__dict__ for m in net.modules())
        torch.testing.assert_close(net(images), y0, rtol=1e-4, atol=1e-5)
    assert net.training and all(m.training for m in net.modules())
    assert not any('forward' in m.__dict__ for m in net.modules())
    y1, gx1, gp1 = out_and_grads(images)
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1) and gp0.keys() == gp1.keys()
    assert all(torch.equal(gp0[k], gp1[k]) for k in gp0)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in sd0.items())

def test_restoration_after_an_error():
    net = _mamba_block('ref')
    with pytest.raises(RuntimeError):
        with lrp_rules(net): raise RuntimeError
    assert 'forward' not in net.__dict__

def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match='unknown LRP rules'):
        with lrp_rules(nn.Linear(2, 2), rules=('scan', 'epsilon')): pass

def test_fused_cpu_scan_backward_matches_the_composite_path(vmamba_mini, images):
    "SS2D's fused CPU op with x_dbl detached: the same relevance as the PyTorch composite path."
    a = lrp_relevance(vmamba_mini, images, [1, 4, 9])
    b = lrp_relevance(set_scan_backend(copy.deepcopy(vmamba_mini), 'torch'), images, [1, 4, 9])
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())

def test_dt_bias_is_a_coefficient_not_an_offset():
    net = _mamba_block('ref')
    names = set(offsets(net))
    assert 'dt_proj.bias' not in names and {'in_proj.bias', 'conv1d.bias', 'out_proj.bias'} <= names

def test_maps_shape_dtype_batch_and_no_grad_callers(vmamba_mini):
    from ssm_explore.evaluate import Normalized
    from ssm_explore.explain import _normalise, to_input
    model = Normalized(vmamba_mini)
    imgs = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        raw = lrp_maps(model, imgs, [0, 1, 2, 3, 4], raw=True, batch_size=2)
        disp = lrp_maps(model, imgs, 2)
    assert raw.shape == disp.shape == (5, 32, 32) and raw.dtype == disp.dtype == np.float32
    assert disp.min() >= 0 and np.allclose(disp.max((1, 2)), 1) and (raw < 0).any()
    one = lrp_maps(model, imgs[3:4], [3], raw=True)                 # batch elements do not interact
    np.testing.assert_allclose(one[0], raw[3], rtol=1e-4, atol=1e-6 * np.abs(raw[3]).max())
    np.testing.assert_allclose(_normalise(torch.from_numpy(lrp_maps(model, imgs, 2, raw=True))), disp, atol=1e-6)
    r_in, _, _ = conservation_terms(vmamba_mini, to_input(imgs, model), [0, 1, 2, 3, 4], dtype=None)
    np.testing.assert_allclose(raw.sum((1, 2)), r_in.numpy(), rtol=1e-3, atol=1e-4 * np.abs(r_in.numpy()).max())
    with pytest.raises(ValueError, match='2 targets for 5 images'): lrp_maps(model, imgs, [1, 2])

def test_registry_covers_the_three_architectures():
    for name in ('vmamba_mini', 'swin_mini', 'convnext_mini'):
        kinds = {type(m) for m in create_mini_model(name, 3, image_size=32).modules()}
        used = {r for k in kinds if k in LRP_FORWARDS for r in LRP_FORWARDS[k].rules}
        assert used, name
    assert set(ALL_RULES) == set(RULES)
