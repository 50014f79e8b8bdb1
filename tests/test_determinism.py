"Training is reproducible to the byte across processes: the same seed gives the same weights."
import hashlib, subprocess, sys, textwrap
import pytest

SCRIPT = textwrap.dedent('''
    import hashlib, sys, torch
    from ssm_explore.core import seed_everything
    from ssm_explore.ministudy import create_mini_model
    torch.set_num_threads(int(sys.argv[2]))
    seed_everything(0)
    model = create_mini_model(sys.argv[1], 12, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 12, (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    h = hashlib.sha256()
    for k, v in model.state_dict().items(): h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())
    print(h.hexdigest())
''')

def _train(name, threads):
    r = subprocess.run([sys.executable, '-c', SCRIPT, name, str(threads)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]

@pytest.mark.parametrize('name', ['vmamba_mini', 'swin_mini', 'convnext_mini'])
def test_training_twice_in_two_processes_gives_the_same_bytes(name):
    assert _train(name, 2) == _train(name, 2)
