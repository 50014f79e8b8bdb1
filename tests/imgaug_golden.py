"""Golden digests of the transforms: fixed images through all 21 transforms x (report configuration + 5 severities).

`python tests/imgaug_golden.py write` records them under the current environment (tests/data/imgaug_golden.json);
`tests/test_imgaug_golden.py` recomputes and compares. Needs NumPy, imgaug and the two torch-free modules
`ssm_explore.core` / `ssm_explore.transforms` only, so the check also runs in a scratch env without torch.
"""
from __future__ import annotations
import hashlib, importlib, json, platform, sys, types
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / 'data'
INPUTS = DATA / 'imgaug_golden_inputs.npz'    # the fixed images, uint8 (H, W, 3)
GOLDEN = DATA / 'imgaug_golden.json'          # digests + the environment that made them + tolerated differences
REFS = DATA / 'imgaug_golden_refs.npz'        # reference pixels of the tolerated cases only
SEED = 0

def load_transforms():
    "ssm_explore.transforms; without torch (scratch env) the package __init__ (which registers timm models) is skipped."
    try: import torch  # noqa: F401
    except ImportError:
        if 'ssm_explore' not in sys.modules:
            pkg = types.ModuleType('ssm_explore'); pkg.__path__ = [str(ROOT / 'ssm_explore')]
            sys.modules['ssm_explore'] = pkg
    importlib.import_module('ssm_explore.imgaug_compat').import_imgaug()   # imgaug 0.4.0 on NumPy 2 as on NumPy 1
    return importlib.import_module('ssm_explore.transforms')

def make_inputs()->dict:
    "The fixed images (run once, in the project env): embedded images, a photo, a seeded noise pattern (non-square)."
    from ssm_explore.data import render_embedded, sample_photos, common_geometry
    rng = np.random.default_rng(20261202)
    yy, xx = np.mgrid[0:96, 0:80]
    noise = np.clip(rng.normal(0, 40, (96, 80, 3)) + np.stack([xx * 3, yy * 2, 255 - xx * 2 - yy], -1), 0, 255)
    return {'embedded64': render_embedded(0, 0, 64), 'embedded160': render_embedded(7, 1, 160),
            'chelsea128': common_geometry(sample_photos(['chelsea'])['chelsea'], 146, 128),
            'astronaut224': common_geometry(sample_photos(['astronaut'])['astronaut'], 256, 224),
            'noise96x80': noise.astype(np.uint8)}

def load_inputs()->dict:
    with np.load(INPUTS) as z: return {k: z[k] for k in z.files}

def digest(a:np.ndarray)->str:
    "SHA-256 of an array's shape, dtype and bytes."
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f'{a.shape}|{a.dtype}|'.encode() + a.tobytes()).hexdigest()

def case_key(name:str, severity, image:str)->str: return f"{name}/{'report' if severity is None else severity}/{image}"

def outputs(images:dict|None=None):
    "Yields (key, output) for every transform x (None, 1..5) x image, with the project's seeding (seed 0, image id = name)."
    T = load_transforms()
    images = load_inputs() if images is None else images
    for name in T.TRANSFORM_NAMES:
        for sev in (None, *T.SEVERITIES):
            for im, a in images.items(): yield case_key(name, sev, im), T.apply_transform(a, name, sev, seed=SEED, image_id=im)

def environment()->dict:
    load_transforms()
    import cv2, imgaug, scipy, skimage
    return dict(python=platform.python_version(), numpy=np.__version__, imgaug=imgaug.__version__, cv2=cv2.__version__,
                scipy=scipy.__version__, skimage=skimage.__version__)

def compare(golden:dict|None=None)->dict:
    "{key: None (byte-identical) | dict(max_abs, frac) (differs; frac = share of differing pixel values) | 'missing'}."
    golden = json.loads(GOLDEN.read_text()) if golden is None else golden
    refs = dict(np.load(REFS)) if REFS.exists() else {}
    out = {}
    for k, a in outputs():
        if k not in golden['digests']: out[k] = 'missing'; continue
        if digest(a) == golden['digests'][k]: out[k] = None; continue
        r = refs.get(k.replace('/', '__'))
        if r is None or r.shape != a.shape: out[k] = dict(max_abs=None, frac=None); continue
        d = np.abs(a.astype(np.int16) - r)
        out[k] = dict(max_abs=int(d.max()), frac=float((d > 0).mean()))
    return out

def write(tolerances:dict|None=None):
    "Record the digests of this environment; `tolerances` {key: dict(max_abs, frac, reason)} keep reference pixels too."
    tolerances = tolerances or {}
    outs = dict(outputs())
    ins = load_inputs()
    g = dict(about=__doc__.splitlines()[0], environment=environment(), seed=SEED,
             inputs={k: [list(v.shape), digest(v)] for k, v in ins.items()},
             digests={k: digest(a) for k, a in outs.items()}, tolerances=tolerances)
    GOLDEN.write_text(json.dumps(g, indent=1) + '\n')
    if tolerances: np.savez_compressed(REFS, **{k.replace('/', '__'): outs[k] for k in tolerances})
    return g

if __name__ == '__main__':
    cmd = sys.argv[1] if len(sys.argv) > 1 else ''
    if cmd == 'inputs': np.savez_compressed(INPUTS, **make_inputs())
    elif cmd == 'write': write(json.loads(Path(sys.argv[2]).read_text()) if len(sys.argv) > 2 else None)
    elif cmd == 'dump':   # all outputs, for diagnosing differences in another environment (not test data)
        np.savez_compressed(sys.argv[2], **{k.replace('/', '__'): a for k, a in outputs()})
    else: sys.exit('usage: python tests/imgaug_golden.py inputs | write [TOLERANCES.json] | dump OUT.npz')
