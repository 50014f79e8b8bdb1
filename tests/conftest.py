"Shared pytest fixtures."
import pytest, torch

@pytest.fixture(scope='module')
def one_thread():
    "One torch thread: on a shared, oversubscribed CPU, OpenMP's spinning threads make small ops 10x slower."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
