"""Shared parametrisation and instruments of the tests."""
import collections
import os
import traceback
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastadv


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


# ----------------------------------------------------------------------------- host reads by origin
aten = torch.ops.aten
PACKAGE = os.path.dirname(fastadv.__file__) + os.sep
VALIDATE = os.path.join(PACKAGE, "_validate.py")

_SCALAR_READS = {aten._local_scalar_dense.default, aten.equal.default, aten.allclose.default}
_VALUE_SHAPED = {aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim, aten.unique_consecutive}


def _boolean_index(func, args) -> bool:
    """``t[mask]`` and ``t[mask] = v``: a boolean index is turned into positions (a nonzero)."""
    if func.overloadpacket not in (aten.index, aten.index_put_, aten.index_put):
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])


def _origin() -> str:
    """``module.function`` of the innermost fastadv frame outside fastadv._validate, e.g.
    ``attacks.base.check_labels``: who asked for the read, whichever check made it."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(PACKAGE) and frame.filename != VALIDATE:
            module = frame.filename[len(PACKAGE):-len(".py")].replace(os.sep, ".")
            return f"{module}.{frame.name}"
    return "outside fastadv"


class CountReads(TorchDispatchMode):
    """Records the origin of every read of a tensor's value by the host (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.origins = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SCALAR_READS or func.overloadpacket in _VALUE_SHAPED or _boolean_index(func, args):
            self.origins[_origin()] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._patches = [mock.patch.object(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))
                         for name in ("tolist", "numpy")]
        self._patches.append(mock.patch.object(fastadv._C, "label_range", self._counted(fastadv._C.label_range)))
        for patch in self._patches:
            patch.start()
        return super().__enter__()

    def __exit__(self, *exc):
        for patch in self._patches:
            patch.stop()
        return super().__exit__(*exc)

    def _counted(self, method):
        def read(tensor, *args, **kwargs):
            self.origins[_origin()] += 1
            return method(tensor, *args, **kwargs)
        return read

    @property
    def total(self) -> int:
        """How many reads, from wherever they came."""
        return sum(self.origins.values())


def reads(run) -> dict:
    with CountReads() as counter:
        run()
    return dict(counter.origins)




# ----------------------------------------------------------------------------- resume
def straight_and_interrupted(tmp_path, config: dict, at=(0, 4)):
    """Trains ``config`` (TrainConfig's fields) straight through into tmp_path/straight, and again
    into tmp_path/interrupted with Ctrl-C (SIGINT) after batch ``at`` = (epoch, batch), then
    resumed to the end. Returns (straight, interrupted, the interrupted run's checkpoint as it
    stood before the resume)."""
    import signal

    from fastadv.train import Interrupted, TrainConfig, train

    straight = train(TrainConfig(run_dir=str(tmp_path / "straight"), **config))

    def press_ctrl_c(epoch, batch):
        if (epoch, batch) == at:
            os.kill(os.getpid(), signal.SIGINT)

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        train(TrainConfig(run_dir=str(interrupted), **config), on_batch_end=press_ctrl_c)
    halfway = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    train(TrainConfig(run_dir=str(interrupted), resume=True, **config))
    return straight, interrupted, halfway
