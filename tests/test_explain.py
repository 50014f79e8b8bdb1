"Explanations on the three architectures: a controlled localisation case, the study pipeline end to end, the CLI."
from __future__ import annotations
import gc, warnings
from types import SimpleNamespace
import numpy as np, pandas as pd, pytest, torch, timm
from ssm_explore.evaluate import Normalized
from ssm_explore.commands.explain import explain_cli
from ssm_explore.explain import explain_maps, predict_images, METHODS, target_layer
from ssm_explore.vmamba_views import route_maps
from ssm_explore.faithfulness import road_scores, random_maps
from ssm_explore.explain_study import run_explain_study

SIZE = 64

def _arch(name:str, classes:int=3)->torch.nn.Module:
    torch.manual_seed(0)
    if name == 'convnext': return timm.create_model('convnext_atto', num_classes=classes, depths=(1, 1, 2, 1), dims=(16, 32, 48, 64))
    if name == 'swin': return timm.create_model('swin_tiny_patch4_window7_224', num_classes=classes, img_size=SIZE, window_size=4,
                                                embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
    from ssm_explore.vmamba import VSSM
    return VSSM(depths=(1, 1, 2, 1), dims=16, num_classes=classes)

def _square(colour, rng, centre=None, size=SIZE, side=20):
    img = np.full((size, size, 3), 128, np.uint8)
    cy, cx = centre if centre is not None else rng.integers(side // 2, size - side // 2, 2)
    img[cy - side // 2:cy + side // 2, cx - side // 2:cx + side // 2] = colour
    return img

RED, BLUE = (230, 30, 30), (30, 30, 230)

def _probe(net:torch.nn.Module)->Normalized:
    """Give a random-weight backbone a head that tells a red square (class 0) from a blue one (class 1): the difference
    of the mean pooled features of 24 images of each, a nearest-centroid direction. No training, so the test is fast."""
    model = Normalized(net.eval()); rng = np.random.default_rng(0)
    with torch.no_grad():
        feats = [net.forward_head(net.forward_features(_in(model, np.stack([_square(c, rng) for _ in range(24)]))),
                                  pre_logits=True).mean(0) for c in (RED, BLUE)]
        d, mid = feats[0] - feats[1], (feats[0] + feats[1]) / 2
        head = net.get_classifier(); head.weight.zero_(); head.bias.zero_()
        head.weight[0], head.weight[1] = d, -d
        head.bias[0], head.bias[1] = -(d @ mid), d @ mid
    return model

def _in(model, x):
    from ssm_explore.explain import to_input
    return to_input(x, model)

@pytest.mark.parametrize('arch', ['vmamba', 'swin', 'convnext'])
def test_evidence_lands_on_the_object_of_its_class(arch):
    """Red square left, blue square right: each class's map is on its own square (a transposed layout would put it
    top/bottom). At 64 px the maps come from the 4x4 stage (`default_layer`); at the 2x2 last stage, random Swin's
    Grad-CAM for the blue class is empty (one attention window covers the whole map)."""
    model = _probe(_arch(arch)); rng = np.random.default_rng(1)
    img = _square(RED, rng, (32, 16)); img[22:42, 38:58] = BLUE
    p = predict_images(model, np.stack([_square(RED, rng), _square(BLUE, rng)]))
    assert p[0, 0] > p[0, 1] and p[1, 1] > p[1, 0]  # the probe works on single objects
    left, right = np.s_[:, :, :SIZE // 2], np.s_[:, :, SIZE // 2:]
    # (LayerCAM is left out: it multiplies positive gradients by activations and assumes post-ReLU (non-negative)
    #  activations; on these LayerNorm'd stage outputs its map for the blue class lands on the red square.)
    for method in ('gradcam', 'captum_gradcam'):  # Occlusion and IG: see the controlled case in nbs/07_explain
        m = explain_maps(model, np.stack([img, img]), [0, 1], method)
        assert m[0][:, :SIZE // 2].mean() > m[0][:, SIZE // 2:].mean(), (arch, method, 'red')
        assert m[1][:, SIZE // 2:].mean() > m[1][:, :SIZE // 2].mean(), (arch, method, 'blue')


def test_route_maps_on_the_probe():
    model = _probe(_arch('vmamba')); rng = np.random.default_rng(1)
    img = _square(RED, rng, (32, 16)); img[22:42, 38:58] = BLUE
    r = route_maps(model, img, 0)
    assert r['maps'].shape == (1, 4, SIZE, SIZE) and np.isclose(r['share'].sum(), 1)
    # route k's map is zero wherever its raw contribution is negative, and the raw maps add up to the merged map
    assert np.allclose(r['raw'].sum(1)[0].clip(min=0) > 0, r['raw'].sum(1)[0] > 0)

def _fake_study(tmp_path):
    "A mini-study result dict with tiny random models and real per-image results on the embedded test images."
    from ssm_explore.data import embedded_dataset, EMBEDDED_CLASSES
    from ssm_explore.explain_study import embedded_images
    cfg = SimpleNamespace(n_per_class=5, image_size=32, seed=0)
    cfg.dataset = lambda: embedded_dataset(n_per_class=cfg.n_per_class, image_size=cfg.image_size, seed=cfg.seed)
    root, man = cfg.dataset()
    run_dir = tmp_path/'robustness'; run_dir.mkdir()
    test = man[man.split == 'test'].reset_index(drop=True); test.to_csv(run_dir/'manifest.csv', index=False)
    n = len(EMBEDDED_CLASSES)
    torch.manual_seed(0)
    from ssm_explore.vmamba import VSSM
    trained = {'vmamba_tiny_test': dict(model=Normalized(VSSM(depths=(1, 1, 1, 1), dims=8, num_classes=n).eval())),
               'convnext_tiny_test': dict(model=Normalized(timm.create_model('convnext_atto', num_classes=n, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)).eval()))}
    study = dict(config=cfg, trained=trained, run_dir=run_dir)
    rows = []
    for t in ('clean', 'fliplr', 'invert'):
        x, y = embedded_images(study, test.image_id.tolist(), t)
        for k, v in trained.items():
            p = predict_images(v['model'], x)
            rows.append(pd.DataFrame(dict(model=k, transform=t, severity=0, image_id=test.image_id, label=y, pred=p.argmax(1),
                                          p_pred=p.max(1), correct=(p.argmax(1) == y).astype(int))))
    res = pd.concat(rows, ignore_index=True)
    # make sure there is a new confusion to explain: the untrained models are "right" on every clean image
    res.loc[res['transform'] == 'clean', 'pred'] = res.loc[res['transform'] == 'clean', 'label']
    study['results'] = res
    return study

def test_run_explain_study_end_to_end(tmp_path):
    study = _fake_study(tmp_path)
    kw = dict(quick=True, methods=('gradcam', 'eigencam', 'occlusion'), fv_steps=4, eval_per_class=1, progress=False)
    r = run_explain_study(tmp_path/'explain', study, **kw)
    for k in ('figure3', 'figure4', 'methods', 'faithfulness', 'faithfulness_ranked', 'case', 'routes', 'routes_vmamba_tiny_test', 'confusions'):
        assert r['files'][k].exists(), k
    assert r['case']['model'] == 'vmamba_tiny_test' and r['case']['true'] != r['case']['pred']
    f = r['faithfulness']
    for m in ('vmamba_tiny_test', 'convnext_tiny_test'):
        assert set(f[f.model == m].method) == {'gradcam', 'eigencam', 'occlusion', 'random'}
        # embedded data: the object masks are known, so the grounding metrics join the faithfulness ones (ROAD is opt-in)
        assert set(f[f.model == m].metric) == {'deletion', 'insertion', 'pointing', 'mask_share'}
    assert f.image.nunique() == pd.read_csv(tmp_path/'robustness'/'manifest.csv').label.nunique() and set(r['ranked'].columns) >= {'mean', 'lo', 'hi', 'rank', 'beats_random'}
    rt = r['routes']
    assert set(rt.model) == {'vmamba_tiny_test'} and {'scan_share', 'skip_share', 'drop_scan', 'drop_skip'} <= set(rt.columns)
    md = r['markdown']
    assert 'deletion AUC' in md and 'mask share' in md and 'scan part' in md and 'ROAD' not in md
    # the section's image links resolve from the folder above (the demo's report), the file's links from its own folder
    import re
    for link in re.findall(r'\]\(([^)]+\.png)\)', md): assert (tmp_path/link).exists(), link
    for link in re.findall(r'\]\(([^)]+\.png)\)', (tmp_path/'explain'/'explain.md').read_text()): assert (tmp_path/'explain'/link).exists(), link
    # resume: the faithfulness rows are cached per model
    before = (tmp_path/'explain'/'faithfulness'/'faithfulness_convnext_tiny_test.csv').stat().st_mtime_ns
    run_explain_study(tmp_path/'explain', study, **kw)
    assert (tmp_path/'explain'/'faithfulness'/'faithfulness_convnext_tiny_test.csv').stat().st_mtime_ns == before

def test_cli_real_mode_on_a_fake_imagenet(tmp_path, capsys):
    from ssm_explore.data import _fake_imagenet
    root = tmp_path/'imagenet'; _fake_imagenet(root, 'folders', per_class=3)
    out = tmp_path/'out'
    # one small model at the report's 224 px (VMamba's route figures are covered by the end-to-end test above)
    rc = explain_cli(['--imagenet', str(root), '--models', 'convnext_atto', '--allow-random-weights', '--max-images', '2',
                      '--true', '1', '--pred', '2', '--transform', 'perspective', '--steps', '1', '--road-images', '1',
                      '--methods', 'gradcam,captum_gradcam', '--out', str(out)])
    assert rc == 0
    assert (out/'figures'/'figure4_evidence.png').exists() and (out/'figures'/'figure3_learned_features.png').exists()
    assert 'report section' in capsys.readouterr().out
    from ssm_explore.core import UserError
    with pytest.raises(UserError, match='no weights for'):
        explain_cli(['--imagenet', str(root), '--models', 'convnext_atto', '--out', str(out)])
    with pytest.raises(SystemExit):
        explain_cli(['--methods', 'nonsense'])


def test_shapleycam_works_on_vmamba_through_the_second_order_scan_fallback():
    "ShapleyCAM needs create_graph=True through the scan: the fast backends fall back to the differentiable reference."
    torch.manual_seed(0)
    m = Normalized(timm.create_model('test_vmamba').eval())
    x = (np.random.default_rng(0).random((1, 64, 64, 3)) * 255).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # no "Exception ignored in BaseCAM.__del__": the registry entry releases cleanly
        g = explain_maps(m, x, 3, 'shapleycam', layer=-1)
        gc.collect()
    assert g.shape == (1, 64, 64) and np.isfinite(g).all() and g.max() > 0
