"The README's main command in its CI size: `ssm-explore demo --quick` on a fresh cache writes the whole report."
import json, os, subprocess, sys
from pathlib import Path

def test_quick_demo_writes_the_report(tmp_path):
    env = {**os.environ, 'SSM_EXPLORE_CACHE': str(tmp_path/'cache'), 'MPLBACKEND': 'Agg'}
    out = tmp_path/'demo'
    r = subprocess.run(['ssm-explore', 'demo', '--quick', '--out', str(out), '--no-progress'], env=env,
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    md = (out/'report.md').read_text()
    assert '## 1. Robustness' in md and (out/'report.html').stat().st_size > 2000
    figs = [out/'robustness'/'figures'/'figure2_best_worst.png', out/'robustness'/'figures'/'heatmap.png']
    assert all(f.stat().st_size > 5000 for f in figs)
    run = json.loads((out/'robustness'/'mini_study.json').read_text())
    assert set(run['models']) == {'vmamba_mini', 'swin_mini', 'convnext_mini'}
    # every image link in the report points at a file that exists
    import re
    for link in re.findall(r'!\[[^\]]*\]\(([^)]+)\)', md): assert (out/link).exists(), link
    demo = json.loads((out/'demo.json').read_text())
    assert 'robustness' in demo['parts'] and 'report' in demo['parts']
