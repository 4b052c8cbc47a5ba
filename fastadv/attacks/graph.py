"""CUDA graphs of an attack's run: the random start, the K forward/backward passes and the fused
steps, captured once per (model, batch shape, dtype, memory format, settings) and replayed per
batch.

On a GPU a PGD-10 step of a ResNet is a few thousand kernel launches around milliseconds of
arithmetic, so the host's work per launch (Python, dispatch, the launchers) sets the pace at
small and medium batches. A replayed graph launches the whole run at once.

What capture needs, and what this module does about it:

- **No read of a device value inside the run.** The attack loops read nothing per step
  (``tests/test_synchronisation.py``); the labels' range is checked outside the graph, once per
  call, as the ungraphed attack does. A model whose forward or backward reads a value (``.item()``,
  data-dependent shapes) is found in the eager warm-up, run with
  ``torch.cuda.set_sync_debug_mode("error")``, before anything is captured.
- **Static shapes and addresses.** The batch (and per-sample radii) are copied into buffers the
  graph reads; the result is copied out of the graph's output, so a later replay never changes a
  tensor a caller holds. A batch of another shape, dtype or layout captures its own graph (at most
  :data:`MAX_GRAPHS_PER_MODEL` per model, the least recently used dropped): never a wrong result.
  Float radii are constants of the kernels, so a new ε or α captures a new graph too.
- **Random starts inside the graph.** The start is drawn by the graph from the attack's generator
  (registered with the graph) or torch's default CUDA generator, whose offset every replay
  advances as the eager calls would: from the same random state the graphed attack draws the
  eager attack's start bit for bit (each generator object captures its own graph). Its steps
  then agree with the eager ones to the rounding of the model's gradients (a capture may pick
  other cuDNN algorithms than an eager call, as two eager calls may).
- **Autocast.** The weight cast cache of ``torch.autocast`` would keep casts made outside the
  graph; the graph is captured and replayed under the caller's autocast state with the cache off,
  and that state is part of the key.

``graph=True`` refuses, with the reason, what cannot be captured (CPU tensors, ``early_stop``,
a model that reads device values, a failed capture); ``graph="auto"`` runs such calls eagerly and
warns once per reason.
"""
from __future__ import annotations

import collections
import warnings
import weakref
from typing import Callable, Optional

import torch
from torch import nn

from .. import _validate as check
from .. import backend

__all__ = ["GRAPH_MODES", "MAX_GRAPHS_PER_MODEL", "GraphUnavailable", "graph_mode", "graphs_captured", "run_graphed"]

GRAPH_MODES = (False, True, "auto")
MAX_GRAPHS_PER_MODEL = 8


class GraphUnavailable(RuntimeError):
    """``graph=True`` was asked for a call that cannot be captured in a CUDA graph."""


def graph_mode(owner: str, value):
    """A valid ``graph`` argument: False, True or "auto"."""
    if value is False or value is True or value == "auto":
        return value
    raise ValueError(f"{owner}: graph must be False, True or 'auto', got {value!r}")


class _Captured:
    """One captured run: its graph, the buffers it reads and the output(s) it writes."""

    def __init__(self):
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.inputs: dict[str, torch.Tensor] = {}
        self.output = None
        self.classes = 0
        # the generator the graph draws from, held so that its id (part of the key) is not reused
        self.generator: Optional[torch.Generator] = None


# model -> OrderedDict[key, _Captured | str (why it cannot be captured)]
_GRAPHS: "weakref.WeakKeyDictionary[nn.Module, collections.OrderedDict]" = weakref.WeakKeyDictionary()
_WARNED: set[str] = set()


def graphs_captured(model: nn.Module) -> int:
    """How many runs are captured for ``model`` (what the trainer's log reports)."""
    return sum(isinstance(v, _Captured) for v in _GRAPHS.get(model, {}).values())


def _radius_key(value):
    return ("tensor", value.dtype) if isinstance(value, torch.Tensor) else ("float", float(value))


def early_stop_reason(owner: str) -> str:
    return (f"{owner}: graph=True cannot capture early_stop, which reads the device once per step "
            f"(whether any sample is left)")


def _static_reason(owner: str, x: torch.Tensor, early_stop: bool) -> Optional[str]:
    if x.device.type != "cuda":
        return f"{owner}: graph=True captures the attack in a CUDA graph, but x is on {x.device}"
    return early_stop_reason(owner) if early_stop else None


def _refuse(mode, reason: str) -> None:
    if mode is True:
        raise GraphUnavailable(reason)
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(f"{reason}; running it without a graph (graph='auto')", RuntimeWarning, stacklevel=4)


def run_graphed(owner: str, mode, model: nn.Module, settings: tuple, x: torch.Tensor, y: torch.Tensor, eps, alpha,
                body: Callable, check_labels: Callable, generator: Optional[torch.Generator] = None,
                early_stop: bool = False, read_labels: bool = True) -> Optional[torch.Tensor]:
    """One run of an attack through its CUDA graph, or None when it must run eagerly (``mode`` is
    "auto" and the run cannot be captured; ``mode=True`` raises :class:`GraphUnavailable` then).

    ``body(x, y, eps, alpha, check)`` is the attack's run on those tensors (it calls
    ``check(logits, y)`` on its first logits unless ``check`` is None) and returns its final point
    (or a named tuple of tensors, the point first: each is copied out of the graph);
    ``settings`` is everything else that changes what it computes (a new value captures a new
    graph); ``check_labels(logits, y)`` is the attack's check of the labels on the first logits,
    run in the warm-up of a capture (later calls check the range against the captured classes,
    unless ``read_labels`` is False: a later restart of the same call, whose labels were read)."""
    reason = _static_reason(owner, x, early_stop)
    if reason is not None:
        _refuse(mode, reason)
        return None
    if torch.cuda.is_current_stream_capturing():
        return None  # inside a graph the caller captures: the run becomes part of it
    device_type = x.device.type
    key = (settings, tuple(x.shape), x.dtype, x.stride(), x.device, tuple(y.shape), _radius_key(eps),
           _radius_key(alpha), torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type),
           backend.requested(), None if generator is None else id(generator))
    graphs = _GRAPHS.setdefault(model, collections.OrderedDict())
    captured = graphs.get(key)
    if captured is None:
        captured = _capture(owner, x, y, eps, alpha, body, check_labels, generator)
        graphs[key] = captured
        while len(graphs) > MAX_GRAPHS_PER_MODEL:
            graphs.popitem(last=False)
    graphs.move_to_end(key)
    if isinstance(captured, str):
        _refuse(mode, captured)
        return None
    if read_labels:
        check.labels(owner, y, batch=y.shape[0], classes=captured.classes, device=x.device)
    inputs = captured.inputs
    inputs["x"].copy_(x)
    inputs["y"].copy_(y)
    for name, value in (("eps", eps), ("alpha", alpha)):
        if isinstance(value, torch.Tensor):
            inputs[name].copy_(value)
    with _autocast_without_cache(device_type):
        captured.graph.replay()
    output = captured.output
    return output.clone() if isinstance(output, torch.Tensor) else type(output)(*(t.clone() for t in output))


class _autocast_without_cache:
    """The caller's autocast state, with the weight cast cache off (see the module docstring)."""

    def __init__(self, device_type: str):
        self.context = torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                                      enabled=torch.is_autocast_enabled(device_type), cache_enabled=False)

    def __enter__(self):
        return self.context.__enter__()

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)


def _rng_state(generator: Optional[torch.Generator], device: torch.device):
    return generator.get_state() if generator is not None else torch.cuda.get_rng_state(device)


def _set_rng_state(generator: Optional[torch.Generator], device: torch.device, state) -> None:
    if generator is not None:
        generator.set_state(state)
    else:
        torch.cuda.set_rng_state(state, device)


def _capture(owner: str, x, y, eps, alpha, body, check_labels, generator):
    """Warm up eagerly (syncs refused, but for the labels' check), then capture; a str says why
    the run could not be captured."""
    device = x.device
    captured = _Captured()
    inputs = captured.inputs
    inputs["x"] = torch.empty_like(x).copy_(x)
    inputs["y"] = y.clone()
    for name, value in (("eps", eps), ("alpha", alpha)):
        if isinstance(value, torch.Tensor):
            inputs[name] = value.clone()
    static_eps, static_alpha = inputs.get("eps", eps), inputs.get("alpha", alpha)
    classes = []
    previous_mode = torch.cuda.get_sync_debug_mode()

    def first_logits(logits, labels):
        torch.cuda.set_sync_debug_mode(previous_mode)  # the labels' check reads them, once
        try:
            check_labels(logits, labels)
        finally:
            torch.cuda.set_sync_debug_mode("error")
        classes.append(logits.shape[1])

    state = _rng_state(generator, device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    try:
        with torch.cuda.stream(side), _autocast_without_cache(device.type):
            torch.cuda.set_sync_debug_mode("error")
            body(inputs["x"], inputs["y"], static_eps, static_alpha, first_logits)
    except RuntimeError as error:
        if "synchroniz" in str(error):
            return (f"{owner}: graph=True cannot capture this model: its forward or backward reads a value back "
                    f"from the device ({str(error).splitlines()[0]})")
        raise
    finally:
        torch.cuda.set_sync_debug_mode(previous_mode)
        torch.cuda.current_stream(device).wait_stream(side)
        _set_rng_state(generator, device, state)
    graph = torch.cuda.CUDAGraph()
    if generator is not None:
        graph.register_generator_state(generator)
    try:
        with torch.cuda.graph(graph), _autocast_without_cache(device.type):
            output = body(inputs["x"], inputs["y"], static_eps, static_alpha, None)
    except RuntimeError as error:
        _set_rng_state(generator, device, state)
        return f"{owner}: graph=True: the capture of the attack failed ({str(error).splitlines()[0]})"
    captured.graph, captured.output, captured.classes = graph, output, classes[0]
    captured.generator = generator
    return captured
