"""Where the op families meet torch.library.

- :func:`layout` reads a fused loss's layout from its registered C++ schema (the convention
  written above ``FASTADV_LOGITS_OPS`` in csrc/include/fastadv/logits.h): which arguments are
  the differentiable inputs, their ``grad_<input>`` flags and the reduction, and which outputs
  are losses, extra state and the gradients ``d<loss>_d<input>``. Nothing about an op is
  counted by hand in Python.
- :func:`loss_fake` and :func:`saved_gradient_autograd` build an op's fake implementation and
  Python autograd from its layout; :func:`member_fake`, :func:`member_backward_fake` and
  :func:`backward_op_autograd` do the same for the member ops (``FASTADV_LOGITS_MEMBER_OPS``:
  V [M, B, C] in, [B, M, M] out, a backward op of their own).
- :class:`Family` is what every op family is built on: its C++ ops, its Triton custom ops, the
  fakes, and :meth:`Family.kernel`, the one dispatch path of every op, public or unchecked (the
  backend's choice resolved once per op, device, dtype and requested backend, then a dict lookup).
  Outside torch.compile it hands out :func:`fast_op` callables, which call the operator through
  the dispatcher without torch.ops' Python layers (csrc/python.cpp).
- :class:`TritonOps` registers a family's Triton functions (``kernels/<family>.py``, one per op,
  named like it) as the custom ops ``fastadv::<op>_triton`` with the C++ op's schema, when the
  family is imported and Triton is installed; the kernels module (and triton, which takes
  seconds to import) is imported on the first call of one of its ops.
"""
from __future__ import annotations

import functools
import importlib
import types
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

from .. import backend, tuned


def schema(name: str) -> torch._C.FunctionSchema:
    """The registered schema of the C++ op ``fastadv::<name>``."""
    return getattr(torch.ops.fastadv, name).default._schema


@dataclass(frozen=True)
class Layout:
    """Positions in a fused loss's schema (see the module docstring)."""

    name: str
    arguments: int
    inputs: tuple   # argument positions of the differentiable tensors
    flags: tuple    # argument positions of their grad_<input> flags
    reduction: Optional[int]
    losses: int
    extras: int
    grads: tuple    # (loss, input) of each gradient output: a return position, an index into inputs


@functools.cache
def layout(name: str) -> Layout:
    op = schema(name)
    tensors, flags, reduction = [], [], None
    for position, argument in enumerate(op.arguments):
        kind = str(argument.type)
        if kind == "Tensor" and argument.name != "y":
            tensors.append((position, argument.name))
        elif kind == "bool":
            flags.append(position)
        elif kind == "int" and argument.name == "reduction":
            reduction = position
    inputs = tensors[:len(flags)]
    grads, named = [], {}
    for position, result in enumerate(op.returns):
        for index, (_, input_name) in sorted(enumerate(inputs), key=lambda item: -len(item[1][1])):
            ending = f"_d{input_name}"
            if result.name.startswith("d") and result.name.endswith(ending) and len(result.name) > len(ending) + 1:
                grads.append((result.name[1:-len(ending)], index))
                break
        else:
            named[result.name] = position
    losses = sum(1 for loss in named if any(loss == of for of, _ in grads))
    return Layout(name=name, arguments=len(op.arguments), inputs=tuple(p for p, _ in inputs), flags=tuple(flags),
                  reduction=reduction, losses=losses, extras=len(named) - losses,
                  grads=tuple((named[of], index) for of, index in grads))


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for the half types, the dtype itself otherwise (float32, float64)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def loss_fake(name: str, accumulated_gradients: bool = False) -> Callable:
    """The fake implementation of a fused loss: losses of the first input's dtype ([B], or 0-dim
    when reduced), extras like the first input, a gradient like it per pair whose input's flag
    is set and an empty [0] tensor otherwise; with ``accumulated_gradients`` (the logits family)
    the gradients are in the accumulation type (float32 for half inputs)."""
    spec = layout(name)

    def fake(*args):
        first = args[spec.inputs[0]]
        reduced = spec.reduction is not None and args[spec.reduction] != 0
        losses = [first.new_empty(() if reduced else (first.shape[0],)) for _ in range(spec.losses)]
        extras = [torch.empty_like(first) for _ in range(spec.extras)]
        dtype = accumulation_dtype(first.dtype) if accumulated_gradients else first.dtype
        grads = [torch.empty_like(first, dtype=dtype) if args[spec.flags[j]] else first.new_empty(0, dtype=dtype)
                 for _, j in spec.grads]
        return tuple(losses + extras + grads)
    return fake


def _is_one(incoming: torch.Tensor) -> bool:
    """Whether ``incoming`` is a scalar gradient of exactly 1, checked only where that is free:
    a plain CPU tensor outside compilation (reading a CUDA scalar would synchronise, and a traced
    gradient has no value)."""
    return (incoming.dim() == 0 and type(incoming) is torch.Tensor and incoming.device.type == "cpu"
            and not torch.compiler.is_compiling() and incoming.item() == 1.0)


def saved_gradient_autograd(name: str) -> tuple[Callable, Callable]:
    """(backward, setup_context) of a fused loss in Python, what csrc/autograd/logits.cpp does
    for the C++ ops: each input's gradient is Σ over its saved gradients of the incoming gradient
    of that loss (per sample, or a scalar) times the saved gradient."""
    spec = layout(name)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output[spec.losses + spec.extras:])
        ctx.mark_non_differentiable(*output[spec.losses:])
        ctx.set_materialize_grads(False)

    def backward(ctx, *grads):
        result = [None] * spec.arguments
        for (loss, j), saved in zip(spec.grads, ctx.saved_tensors):
            incoming, position = grads[loss], spec.inputs[j]
            if incoming is None or saved.dim() == 1:  # an empty [0]: this gradient was not asked for
                continue
            if result[position] is None and _is_one(incoming):
                # A scalar loss reached with gradient 1: the saved gradient is the answer (see
                # csrc/autograd/logits.cpp for why returning it is safe).
                result[position] = saved
                continue
            scale = incoming.reshape(incoming.shape + (1,) * (saved.dim() - incoming.dim()))
            result[position] = saved * scale if result[position] is None else torch.addcmul(result[position], saved,
                                                                                             scale)
        return tuple(result)

    return backward, setup_context


def member_fake(V, y, *flags):
    """The fake of a member op (FASTADV_LOGITS_MEMBER_OPS in logits.h): V [M, B, C] in, [B, M, M]
    of V's dtype out."""
    return V.new_empty(V.shape[1], V.shape[0], V.shape[0])


def member_backward_fake(grad, V, y, *flags):
    """The fake of a member op's backward op: the gradient with respect to V, like V."""
    return torch.empty_like(V)


def backward_op_autograd(backward_op: Callable) -> tuple[Callable, Callable]:
    """(backward, setup_context) of a member op in Python, what csrc/autograd/logits.cpp's
    MemberBackward does for the C++ ops: ``backward_op(grad, *the forward's arguments)`` is the
    gradient with respect to the first argument, V; the others get none."""

    def setup_context(ctx, inputs, output):
        ctx.positions = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
        ctx.save_for_backward(*(inputs[i] for i in ctx.positions))
        ctx.arguments = [None if isinstance(a, torch.Tensor) else a for a in inputs]

    def backward(ctx, grad):
        arguments = list(ctx.arguments)
        for position, tensor in zip(ctx.positions, ctx.saved_tensors):
            arguments[position] = tensor
        return (backward_op(grad.contiguous(), *arguments),) + (None,) * (len(arguments) - 1)

    return backward, setup_context


def triton_name(name: str) -> str:
    """``fastadv::<op>_triton``; an in-place op keeps its trailing underscore last."""
    return f"{name[:-1]}_triton_" if name.endswith("_") else f"{name}_triton"


def _lazy_kernel(family: str, name: str) -> Callable:
    """``kernels/<family>.py``'s function ``name``, imported on its first call (importing triton
    takes seconds). The call runs the custom op's implementation, never traced by torch.compile
    (the op is opaque to it), so the import may happen inside a compiled function."""
    resolved: list[Callable] = []  # the function, once imported: every later call goes straight to it

    def kernel(*args):
        if not resolved:
            resolved.append(getattr(importlib.import_module(f"fastadv.kernels.{family}"), name))
        return resolved[0](*args)
    kernel.__name__ = kernel.__qualname__ = name
    return kernel


class TritonOps:
    """A family's Triton kernels as custom ops: ``TritonOps("logits", names, fake=...).trades_kl``
    is ``fastadv::trades_kl_triton``.

    They are custom ops with fake implementations rather than ``triton_op``s: opaque to
    torch.compile exactly like the C++ kernels, which also keeps opcheck and torch.compile
    working in Triton's interpreter (a triton_op's fake run would launch the interpreter on
    fake tensors).

    The ops are registered when the family is built (its module imported) where Triton is
    installed, not on first use: a first use inside ``torch.compile(fullgraph=True)`` would
    otherwise register them while dynamo traces, and dynamo refuses to trace the import
    (importlib's ``_gcd_import``). Registering imports neither
    triton nor the kernels (:func:`_lazy_kernel`). Without Triton they are registered on first
    attribute access, where the kernels' import then fails with triton's own error."""

    def __init__(self, family: str, names: Iterable[str], fake: Callable[[str], Callable],
                 autograd: Optional[Callable[[str], tuple]] = None):
        self._family, self._names, self._fake, self._autograd = family, tuple(names), fake, autograd
        self._ops = self._register() if backend.triton_available() else None

    def _register(self) -> dict:
        ops = {}
        for name in self._names:
            definition = schema(name)
            mutated = [a.name for a in definition.arguments if a.alias_info is not None and a.alias_info.is_write]
            op = torch.library.custom_op(f"fastadv::{triton_name(name)}", _lazy_kernel(self._family, name),
                                         mutates_args=mutated, schema="(" + str(definition).split("(", 1)[1])
            op.register_fake(self._fake(name))
            autograd = self._autograd(name) if self._autograd is not None else None
            if autograd is not None:  # None: an op without a gradient (a backward op)
                backward, setup = autograd
                op.register_autograd(backward, setup_context=setup)
            ops[name] = op
        return ops

    def __getattr__(self, name: str):
        # Only the registered names (a backward op's starts with an underscore); never the
        # instance's own attributes, which a half-built instance may lack.
        if name not in self.__dict__.get("_names", ()):
            raise AttributeError(f"the {self.__dict__.get('_family')} family has no op {name!r}")
        if self._ops is None:
            self._ops = self._register()
        return self._ops[name]


@functools.cache
def fast_op(qualified: str, overload) -> Callable:
    """A callable for the operator ``qualified`` ("fastadv::trades_kl") that skips torch.ops'
    Python layers (csrc/python.cpp): the same dispatcher call, positional arguments only, several
    microseconds less per call. ``overload`` (its OpOverload) serves tensors with
    ``__torch_function__``."""
    from .. import _C
    function = _C.fast_op(qualified, overload)
    _OPERATOR_OF[function] = qualified
    return function


_OPERATOR_OF: dict = {}


def operator_of(kernel: Callable) -> str:
    """The operator ("fastadv::trades_kl") a kernel handed out by :meth:`Family.kernel` calls."""
    return _OPERATOR_OF.get(kernel) or kernel._schema.name


def traced_op(overload) -> Callable:
    """The OpOverload ``overload`` called as a :func:`fast_op` is (what torch.compile traces):
    for a fused loss (trailing ``grad_<input>`` flags), the tensors it only reads made contiguous
    and its flags, when left out, whether grad mode is on and ``<input>`` requires a gradient."""
    arguments = overload._schema.arguments
    names = [a.name for a in arguments]
    read = [i for i, a in enumerate(arguments)
            if str(a.type) in ("Tensor", "Optional[Tensor]") and not (a.alias_info is not None and a.alias_info.is_write)]
    flags = []
    for a in reversed(arguments):
        if str(a.type) != "bool" or not a.name.startswith("grad_") or a.name[5:] not in names:
            break
        flags.insert(0, names.index(a.name[5:]))
    required = len(arguments) - len(flags)

    if not flags:  # not a fused loss: its arguments as they are
        return overload

    def call(*args):
        args = list(args)
        for i in read:
            if args[i] is not None:
                args[i] = args[i].contiguous()
        if len(args) == required:
            grad = torch.is_grad_enabled()
            args += [grad and args[j].requires_grad for j in flags]
        return overload(*args)
    return call


def device_type(t: torch.Tensor) -> str:
    """``t.device.type``, read the cheap way for the two common cases (``t.device`` builds an
    object: it costs more than some ops' whole dispatch)."""
    return "cuda" if t.is_cuda else "cpu" if t.is_cpu else t.device.type


class Family:
    """An op family's place in torch.library and its one dispatch path.

    ``Family("pgd")`` at the top of the family's module gives it ``unchecked``, the namespace of
    the ops for loops that validated their arguments once (filled by :meth:`unchecked_op`);
    :meth:`register`, at the bottom once its ops are defined, registers the fakes of its C++ ops
    and its Triton custom ops (:class:`TritonOps`, with their autograd). Then :meth:`kernel` is
    the op that runs ``name`` on tensors of a device and dtype: the Triton custom op, the C++ op,
    or None where the reference runs, chosen by :func:`fastadv.backend.select` on the first call
    for that (op, device type, dtype, fit, requested backend) and looked up after that. Every
    public and every unchecked op of the four families dispatches through it.

    A backend named explicitly that cannot run the inputs raises
    (:class:`fastadv.backend.BackendUnavailable`) on every call; only choices are remembered.
    :meth:`clear` forgets them (for a test that changes what the machine can do)."""

    def __init__(self, name: str):
        self.name = name
        self.unchecked = types.SimpleNamespace()
        self.cpp: dict = {}
        self.triton: Optional[TritonOps] = None
        self._kernels: dict = {}
        self._traced: dict = {}

    def register(self, names: Iterable[str], fake: Callable[[str], Callable],
                 autograd: Optional[Callable[[str], tuple]] = None):
        """The fakes of the C++ ops ``names`` (backward ops included), the C++ ops by name, and
        their Triton custom ops."""
        names = tuple(names)
        for op in names:
            torch.library.register_fake(f"fastadv::{op}")(fake(op))
        self.cpp = {op: getattr(torch.ops.fastadv, op).default for op in names}
        self.triton = TritonOps(self.name, names, fake=fake, autograd=autograd)
        # built here, not while torch.compile traces a first call
        self._traced = {("cpp", op): traced_op(self.cpp[op]) for op in names}
        if self.triton._ops is not None:
            self._traced.update({("triton", op): traced_op(getattr(torch.ops.fastadv, triton_name(op)).default)
                                 for op in names})
        self.clear()
        return self

    def _callable(self, op: str, chosen: str, compiling: bool):
        """What runs ``op`` on the backend ``chosen``: its OpOverload while torch.compile traces
        (dynamo knows those), otherwise :func:`fast_op`'s direct call of the same operator."""
        if compiling:
            return self._traced[("triton" if chosen == "triton" else "cpp", op)]
        overload = getattr(self.triton, op) if chosen == "triton" else self.cpp[op]
        qualified = f"fastadv::{triton_name(op) if chosen == 'triton' else op}"
        return fast_op(qualified, overload)

    def kernel(self, op: str, device, dtype: torch.dtype, triton_fits: bool = True, numel: int = 0):
        """``device``: a torch.device or its type, "cpu" or "cuda" (:func:`device_type`, cheaper);
        ``numel``: the elements of the first input, whose size class picks among the GPU backends
        (fastadv.tuned; not looked at elsewhere)."""
        kind = device if type(device) is str else device.type
        # the size class matters only where a measured table can choose by it
        size = backend.size_class(numel) if kind == "cuda" and numel and tuned.TABLE else 0
        compiling = torch.compiler.is_compiling()
        key = (op, kind, dtype, triton_fits, size, backend.requested(), compiling)
        try:
            return self._kernels[key]
        except KeyError:
            pass
        chosen = backend.select(op, torch.device(kind), dtype, triton_fits, size)
        kernel = None if chosen == "reference" else self._callable(op, chosen, compiling)
        self._kernels[key] = kernel
        return kernel

    def clear(self) -> None:
        self._kernels.clear()

    def unchecked_op(self, function: Callable) -> Callable:
        """Registers ``_<op>``, the unchecked body of an op, as ``unchecked.<op>``."""
        setattr(self.unchecked, function.__name__.lstrip("_"), function)
        return function
