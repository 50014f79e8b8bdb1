"Massachusetts Roads readers, the no-data rule, tiling/stitching, batches, augmentation and the generators."
import numpy as np, pytest, torch, torch.nn as nn
from pathlib import Path
from PIL import Image
from ssm_explore.roads import *
from ssm_explore.core import UserError


pytestmark = pytest.mark.usefixtures('one_thread')   # see conftest.py


def _write(p, a):
    p.parent.mkdir(parents=True, exist_ok=True); Image.fromarray(a).save(p)


@pytest.mark.parametrize('layout', ['original', 'mirror'])
def test_layouts_read_the_same_cases(tmp_path, layout):
    root = write_synthetic_roads(tmp_path/layout, layout, counts=dict(train=2, valid=1, test=1), size=64)
    pairs = find_roads_pairs(root)
    assert sorted(pairs) == ['test', 'train', 'valid']
    assert [a.stem for a, _ in pairs['train']] == [b.stem for _, b in pairs['train']]
    img, lbl = read_roads_case(*pairs['train'][0])
    ref_img, ref_lbl = make_aerial_roads(0, size=64)
    assert np.array_equal(img, ref_img)
    expect = (ref_lbl > 0).astype(np.uint8); expect[nodata_mask(ref_img)] = 0
    assert lbl.dtype == np.uint8 and set(np.unique(lbl)) <= {0, 1} and np.array_equal(lbl, expect)
    if layout == 'mirror':
        assert (root/'metadata.csv').read_text().splitlines()[0].startswith('image_id,split,image_souce_url')


def test_mirror_png_copy_and_rgb_labels(tmp_path):
    img, lbl = make_aerial_roads(5, size=48, nodata_prob=0)
    _write(tmp_path/'png'/'train'/'a.png', img)
    _write(tmp_path/'png'/'train_labels'/'a.png', np.repeat(lbl[..., None], 3, -1))   # RGB 0/255 label
    (tmp_path/'tiff').mkdir()
    with pytest.raises(ValueError, match='no training images'): find_roads_pairs(tmp_path, 'tiff')
    pairs = find_roads_pairs(tmp_path, 'png')
    _, l = read_roads_case(*pairs['train'][0])
    assert np.array_equal(l, (lbl > 0).astype(np.uint8))


def test_clear_errors(tmp_path):
    with pytest.raises(UserError, match='not found'): roads_layout(tmp_path/'nope')
    with pytest.raises(ValueError, match='not a Massachusetts Roads folder'): roads_layout(tmp_path)
    img, lbl = make_aerial_roads(1, size=32)
    _write(tmp_path/'train'/'sat'/'x1.tiff', img); _write(tmp_path/'train'/'map'/'x1.tif', lbl)
    _write(tmp_path/'train'/'sat'/'x2.tiff', img)
    with pytest.raises(UserError, match='x2.tiff'): find_roads_pairs(tmp_path)
    _write(tmp_path/'train'/'map'/'x2.tif', lbl[:16])
    with pytest.raises(ValueError, match='does not match'): read_roads_case(tmp_path/'train'/'sat'/'x2.tiff', tmp_path/'train'/'map'/'x2.tif')
    (tmp_path/'train'/'sat'/'bad.tiff').write_bytes(b'not an image'); _write(tmp_path/'train'/'map'/'bad.tif', lbl)
    with pytest.raises(ValueError, match='bad.tiff: cannot read'): read_image(tmp_path/'train'/'sat'/'bad.tiff')


def test_nodata_rule_matches_nnunet_converter():
    "White components > 50 px (8-connected) with holes filled lose their labels; small white specks do not."
    im = np.full((40, 40, 3), 90, np.uint8)
    im[0:10, 0:10] = 255; im[4, 4] = 10             # 99 white px with a 1-px hole -> no-data incl. the hole
    im[20:27, 20:27] = 255                          # 49 px: too small
    for i in range(8): im[30 + i % 2, 30 + i] = 255   # diagonal-touching chain, one 8-connected component of 8
    m = nodata_mask(im)
    assert m[0:10, 0:10].all() and m.sum() == 100


def test_sliding_window_equals_whole_image_for_pointwise_model():
    "A pointwise (1x1) network gives the same answer tiled and stitched as on the whole image — incl. padding."
    torch.manual_seed(0)
    net = nn.Conv2d(3, 2, 1)
    for H, W in ((100, 130), (40, 50)):   # the second is smaller than the patch
        img = np.random.default_rng(H).integers(0, 255, (H, W, 3), dtype=np.uint8)
        prob = sliding_window_predict(net, img, patch=64, step=0.5)
        with torch.no_grad(): ref = net(normalize(img)[None]).softmax(1)[0].numpy()
        assert prob.shape == (2, H, W)
        np.testing.assert_allclose(prob, ref, atol=1e-5)


def test_batches_deterministic_with_foreground_oversampling():
    data = synthetic_split('roads', 'train', n=3, size=96)
    x1, y1 = sample_batch(data, 6, 32, seed=1, step=4)
    x2, y2 = sample_batch(data, 6, 32, seed=1, step=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(sample_batch(data, 6, 32, seed=1, step=5)[1], y1)
    assert all(y1[i].any() for i in (4, 5))          # the last third is centred on roads
    assert x1.shape == (6, 3, 32, 32) and y1.dtype == torch.int64
    # z-scored with the whole image's statistics
    m, s = data.stats[0]; assert np.allclose((data.images[0].reshape(-1, 3) - m).mean(0) / s, 0, atol=1e-4)
    with pytest.raises(ValueError, match='larger than the images'): sample_batch(data, 2, 128, 0, 0)


def test_augment_keeps_labels_binary_and_is_seeded():
    data = synthetic_split('roads', 'train', n=2, size=64)
    x, y = sample_batch(data, 8, 48, seed=0, step=0)
    aug = Augment(p_rotate=1, p_scale=1, p_noise=1, p_blur=1, p_brightness=1, p_contrast=1, p_gamma=1)
    xa, ya = aug(x, y, seed=3)
    assert xa.shape == x.shape and ya.shape == y.shape and set(ya.unique().tolist()) <= {0, 1}
    assert torch.isfinite(xa).all() and not torch.equal(xa, x)
    assert torch.equal(aug(x, y, seed=3)[0], xa)


def test_generators():
    a, b = make_aerial_roads(7), make_aerial_roads(7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # no-data wedges occur, keep their labels in the raw tile (as in the real data), and are cleared by synthetic_split
    seeds = [s for s in range(40) if nodata_mask(make_aerial_roads(s, size=96)[0]).any()]
    assert seeds, 'some tiles must have a no-data region'
    fg = np.mean([(make_aerial_roads(s, size=128)[1] > 0).mean() for s in range(10)])
    assert 0.02 < fg < 0.3
    w_img, w_lbl = make_aerial_water(2, size=96)
    assert w_img.max() <= 254 and (w_lbl > 0).any()
    with pytest.raises(KeyError, match='unknown synthetic task'): synthetic_split('cats')
