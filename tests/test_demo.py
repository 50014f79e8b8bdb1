"""The README's main command in its CI size: `ssm-explore demo --quick` on a fresh cache writes the whole report, and a
second process on another fresh cache retrains and rewrites the robustness part byte for byte."""
import json, os, re, subprocess, sys
from pathlib import Path

def _fresh_cache(path:Path)->dict:
    "A fresh SSM_EXPLORE_CACHE that shares only the compiled scan kernel (so a test does not rebuild it)."
    path.mkdir(parents=True)
    home = Path(os.environ.get('SSM_EXPLORE_CACHE') or Path.home()/'.cache'/'ssm_explore')
    if (home/'ext').is_dir(): (path/'ext').symlink_to(home/'ext', target_is_directory=True)
    return {**os.environ, 'SSM_EXPLORE_CACHE': str(path), 'MPLBACKEND': 'Agg'}

def _run(args, env):
    r = subprocess.run(['ssm-explore', *args], env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r

def _files(root:Path)->dict:
    "relative path -> bytes of every result file (the wall times excepted)"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file() and p.name not in ('timings.json', 'run.json')}   # run.json: provenance (paths, a timestamp)

def test_quick_demo_writes_the_report_and_reruns_byte_identical(tmp_path):
    out = tmp_path/'demo'
    _run(['demo', '--quick', '--out', str(out), '--no-progress'], _fresh_cache(tmp_path/'cache'))
    md = (out/'report.md').read_text()
    assert '## 1. Robustness' in md and (out/'report.html').stat().st_size > 2000
    assert 'consistent on' in md and 'Explanations against ground truth' in md and 'Recognisability' in md
    figs = [out/'robustness'/'figures'/f'{n}.png' for n in ('figure2_best_worst', 'heatmap', 'learning_curves')]
    assert all(f.stat().st_size > 5000 for f in figs)
    run = json.loads((out/'robustness'/'mini_study.json').read_text())
    assert set(run['models']) == {f'{a}_mini-s{s}' for a in ('vmamba', 'swin', 'convnext') for s in (0, 1)}
    for link in re.findall(r'!\[[^\]]*\]\(([^)]+)\)', md): assert (out/link).exists(), link   # every image link resolves
    demo = json.loads((out/'demo.json').read_text())
    assert 'robustness' in demo['parts'] and 'report' in demo['parts'] and set(demo['part_seconds']) >= {'robustness', 'explain'}
    # a second process, another empty cache: the models are trained again, and every table and figure has the same bytes
    out2 = tmp_path/'demo2'
    _run(['demo', '--quick', '--parts', 'robustness', '--out', str(out2), '--no-progress'], _fresh_cache(tmp_path/'cache2'))
    a, b = _files(out/'robustness'), _files(out2/'robustness')
    assert sorted(a) == sorted(b) and len(a) > 20
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, differ
    sha = lambda o: {k: v['checkpoint_sha256'] for k, v in json.loads((o/'robustness'/'run.json').read_text())['models'].items()}
    assert sha(out) == sha(out2)   # the retrained weights themselves are bit-identical
