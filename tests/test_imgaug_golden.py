"""The transforms' pixels are those recorded under NumPy 1.26 / imgaug 0.4.0 (tests/data/imgaug_golden.json).

Fixed images (tests/data/imgaug_golden_inputs.npz) through all 21 transforms x (report configuration + severities
1-5) with the project's seeding: 630 outputs, each byte-identical to its recorded SHA-256 unless the golden file
states a tolerance (max |difference|, share of differing values) and why. Imports no torch, so the same file runs
in a NumPy 2 scratch env: `python -m pytest --noconftest tests/test_imgaug_golden.py`.
"""
import json
import numpy as np
import pytest
import imgaug_golden as G

@pytest.fixture(scope='module')
def golden(): return json.loads(G.GOLDEN.read_text())

def test_inputs_are_the_recorded_images(golden):
    ins = G.load_inputs()
    assert {k: [list(v.shape), G.digest(v)] for k, v in ins.items()} == golden['inputs']
    assert all(v.dtype == np.uint8 and v.ndim == 3 and v.shape[2] == 3 for v in ins.values())
    assert len({v.shape[:2] for v in ins.values()}) >= 4            # sizes 64..224, one non-square

def test_golden_covers_every_transform_and_severity(golden):
    T = G.load_transforms()
    want = {G.case_key(n, s, im) for n in T.TRANSFORM_NAMES for s in (None, *T.SEVERITIES) for im in golden['inputs']}
    assert set(golden['digests']) == want and len(want) == 21 * 6 * len(golden['inputs'])

def test_every_output_matches_the_recorded_pixels(golden):
    res = G.compare(golden)
    tol = golden['tolerances']
    bad = {k: v for k, v in res.items() if v is not None and not (
        k in tol and isinstance(v, dict) and v['max_abs'] is not None
        and v['max_abs'] <= tol[k]['max_abs'] and v['frac'] <= tol[k]['frac'])}
    assert not bad, (f"{len(bad)} of {len(res)} outputs differ from the golden digests recorded under "
                     f"{golden['environment']} (this env: {G.environment()}): {dict(list(bad.items())[:12])}")
    # stated tolerances must still be needed: a case that became byte-identical again loses its entry
    assert not [k for k in tol if res.get(k) is None], 'tolerances for byte-identical cases: drop them'
    assert all(tol[k].get('reason') for k in tol)

def test_digest_sees_one_changed_value():
    a = np.zeros((4, 5, 3), np.uint8); b = a.copy(); b[3, 4, 2] = 1
    assert G.digest(a) != G.digest(b) and G.digest(a) != G.digest(a.reshape(5, 4, 3))
