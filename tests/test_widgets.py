"Widgets driven through their controls on embedded images: what is displayed follows the controls."
from __future__ import annotations
import io
import numpy as np, torch, timm
from PIL import Image
from ssm_explore.evaluate import Normalized
from ssm_explore.data import render_embedded, EMBEDDED_CLASSES
from ssm_explore.widgets import cam_grid, feature_pair

def _model(seed):
    torch.manual_seed(seed)
    return Normalized(timm.create_model('convnext_atto', num_classes=len(EMBEDDED_CLASSES), depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)).eval())

def _shown(img_widget)->np.ndarray:
    return np.asarray(Image.open(io.BytesIO(img_widget.value)))

def test_cam_grid_follows_transform_severity_and_class():
    x = np.stack([render_embedded(k, 0, 64) for k in range(4)]); y = list(range(4))
    g = cam_grid({'m0': _model(0), 'm1': _model(1)}, x, y, EMBEDDED_CLASSES, image_ids=[f'e{k}' for k in range(4)],
                 transforms=['clean', 'gaussian_blur', 'invert'])
    first = _shown(g.image)
    assert first.ndim == 3 and first.shape[1] > first.shape[0]  # a 2 x 4 grid, wider than tall
    g.transform.value = 'gaussian_blur'; g.severity.value = 5
    assert g.state['transform'] == 'gaussian_blur' and g.state['severity'] == 5
    blurred = g.transformed()
    assert np.abs(blurred.astype(int) - x).mean() > 1  # the grid shows transformed images
    g.severity.value = 1
    assert np.abs(g.transformed().astype(int) - x).mean() < np.abs(blurred.astype(int) - x).mean()  # milder
    g.target.value = 3
    assert g.state['targets'] == [3] * 4
    g.model.value = 'm1'
    assert '<b>m1</b>' in g.caption.value
    for name in (EMBEDDED_CLASSES[p] for p in g.state['pred']): assert name in g.caption.value
    assert not np.array_equal(_shown(g.image), first)

def test_feature_pair_caches_and_shows_both_classes():
    fp = feature_pair({'m0': _model(0), 'm1': _model(1)}, EMBEDDED_CLASSES, size=32, steps=3, a=0, b=1)
    assert fp.state['classes'] == [0, 1] and set(fp.state['images']) == {'m0', 'm1'}
    fp.a.value = 2
    assert fp.state['classes'] == [2, 1] and len(fp.cache) == 6  # 2 models x 3 classes, each computed once
    assert EMBEDDED_CLASSES[2] in fp.caption.value and EMBEDDED_CLASSES[1] in fp.caption.value
    im = _shown(fp.image); assert im.shape[0] > 32 and im.shape[1] > 32
