"""Shared parametrisation of the tests."""
import pytest
import torch


def device_of(backend: str) -> torch.device:
    """Where a backend's tensors live in the tests: Triton runs on CPU tensors under the
    interpreter when there is no GPU."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.cuda),
    pytest.param("triton", id="triton", marks=pytest.mark.triton),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for a test module (import it there: autouse then applies to that module).
    The evaluation tests work on batches of a few dozen 8x8 digits, where a second thread costs
    more than it brings: AutoAttack on 200 digits took 20 s on one thread and 85 s on two, on this
    2-core machine shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
