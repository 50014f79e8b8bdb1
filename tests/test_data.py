"Data: the three ImageNet layouts with CMYK / greyscale / PNG-in-JPEG / truncated files, sampler reproducibility, materialise = stream."
import io, numpy as np, pandas as pd, pytest
from PIL import Image
from ssm_explore.data import (imagenet_val_manifest, detect_imagenet_layout, imagenet_subset, sample_per_class, verify_images,
                              read_manifest, write_manifest, load_image, _fake_imagenet, TransformedImageDataset, materialize,
                              embedded_dataset, usable, ImageDecodeError)

def _jpeg(mode):
    b = io.BytesIO(); Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)).convert(mode).save(b, 'JPEG'); return b.getvalue()

def _png():
    b = io.BytesIO(); Image.fromarray(np.full((30, 30, 3), 200, np.uint8)).save(b, 'PNG'); return b.getvalue()

def _extra(layout, n0=13):
    "Odd files added to a fake copy: CMYK, greyscale, PNG-in-JPEG, truncated (ids after the regular ones)."
    d = {'folders': 'val/n01440764', 'kaggle': 'ILSVRC/Data/CLS-LOC/val', 'devkit': 'val'}[layout]
    full = _jpeg('RGB')
    return {f'{d}/ILSVRC2012_val_{n0:08d}.JPEG': _jpeg('CMYK'), f'{d}/ILSVRC2012_val_{n0 + 1:08d}.JPEG': _jpeg('L'),
            f'{d}/ILSVRC2012_val_{n0 + 2:08d}.JPEG': _png(), f'{d}/ILSVRC2012_val_{n0 + 3:08d}.JPEG': full[:len(full) // 2]}

def _add_labels(root, layout, ids):
    "Give the extra files ground truth (class n01440764)."
    if layout == 'kaggle':
        m = pd.read_csv(root/'LOC_val_solution.csv')
        m = pd.concat([m, pd.DataFrame(dict(ImageId=ids, PredictionString=['n01440764 1 1 2 2'] * len(ids)))])
        m.to_csv(root/'LOC_val_solution.csv', index=False)
    if layout == 'devkit':
        gt = root/'ILSVRC2012_devkit_t12'/'data'/'ILSVRC2012_validation_ground_truth.txt'
        gt.write_text(gt.read_text() + '3\n' * len(ids))  # devkit id 3 = n01440764 in the fake devkit (reversed order)

@pytest.mark.parametrize('layout', ['folders', 'kaggle', 'devkit'])
def test_reader_layouts_with_odd_files(tmp_path, layout):
    truth = _fake_imagenet(tmp_path, layout, extra=_extra(layout))
    ids = [f'ILSVRC2012_val_{k:08d}' for k in range(13, 17)]
    _add_labels(tmp_path, layout, ids)
    assert detect_imagenet_layout(tmp_path) == layout
    m = imagenet_val_manifest(tmp_path)
    assert len(m) == 16 and m.image_id.is_unique
    assert dict(zip(m.image_id, m.wnid)) == {**truth, **{i: 'n01440764' for i in ids}}
    assert set(m.loc[m.wnid == 'n01484850', 'label']) == {2}
    cmyk, grey, png, trunc = [tmp_path/m.set_index('image_id').path[i] for i in ids]
    for f in (cmyk, grey, png):
        a = load_image(f); assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    with pytest.raises(ImageDecodeError, match=trunc.name): load_image(trunc)
    # the truncated file stops the run, naming it; skip mode records it in the manifest instead
    sub = m[m.image_id.isin(ids)]
    with pytest.raises(ImageDecodeError, match=trunc.name): verify_images(sub, tmp_path)
    v = verify_images(sub, tmp_path, skip_bad=True)
    assert v.set_index('image_id').error[ids[3]] != '' and (v.error != '').sum() == 1
    write_manifest(v, tmp_path/'run.csv'); back = read_manifest(tmp_path/'run.csv')
    pd.testing.assert_frame_equal(back, v)
    assert len(usable(back)) == 3 and len(TransformedImageDataset(back, geometry=(40, 32), root=tmp_path)) == 3

def test_missing_file_stops_with_its_path(tmp_path):
    _fake_imagenet(tmp_path, 'folders')
    m = imagenet_val_manifest(tmp_path)
    (tmp_path/m.path[4]).unlink()
    with pytest.raises(FileNotFoundError, match=m.path[4].split('/')[-1]): verify_images(m, tmp_path)
    ds = TransformedImageDataset(m, root=tmp_path, geometry=(40, 32))
    with pytest.raises(FileNotFoundError, match=m.path[4].split('/')[-1]): ds[4]

def test_sampler_is_reproducible_and_balanced(tmp_path):
    _fake_imagenet(tmp_path, 'devkit', wnids=('n01440764', 'n01443537', 'n01484850', 'n01491361'), per_class=6)
    a = imagenet_subset(tmp_path, per_class=3, seed=5, out=tmp_path/'a.csv')
    b = imagenet_subset(tmp_path, per_class=3, seed=5, out=tmp_path/'b.csv')
    assert (tmp_path/'a.csv').read_bytes() == (tmp_path/'b.csv').read_bytes()
    assert a.groupby('label').size().tolist() == [3] * 4 and a.sha256.str.len().eq(64).all()
    c = imagenet_subset(tmp_path, per_class=3, seed=6)
    assert set(c.image_id) != set(a.image_id)
    # the sample does not depend on the manifest's row order
    m = imagenet_val_manifest(tmp_path)
    pd.testing.assert_frame_equal(sample_per_class(m.sample(frac=1, random_state=1), 3, 5), sample_per_class(m, 3, 5))

def test_materialized_equals_streamed(tmp_path):
    root, m = embedded_dataset(tmp_path/'emb', n_per_class=3, image_size=48)
    for name, sev in [('affine', None), ('salt', 5), ('hue_saturation', 2)]:
        out = materialize(m, tmp_path/'mat', name, sev, seed=3, geometry=(40, 32), root=root, num_workers=2)
        a = TransformedImageDataset(m, name, sev, seed=3, geometry=(40, 32), root=root)
        b = TransformedImageDataset(out, 'clean', geometry=None, root=tmp_path/'mat')
        for k in range(len(a)): assert a.ids[k] == b.ids[k] and a[k][0].equal(b[k][0])
