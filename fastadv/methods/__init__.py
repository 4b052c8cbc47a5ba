"""Training methods: each turns a batch into a loss (see base.Method and METHODS.md).

A method's options are the parameters of its ``__init__`` (and of its bases', reached through
``**options``); their help text is the ``option_help`` of the class that declares them. The
command line builds its method flags from these two, so a new option needs nothing else.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from .. import _validate as check
from .base import REGISTRY, Method

# Every module of this package is imported, so that each method class registers itself
# (base.Method.__init_subclass__): a new method is a new module here, and nothing else.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

#: every method by name: the single-model methods, then the ensemble methods, each by name
METHODS: dict[str, type[Method]] = dict(sorted(REGISTRY.items(), key=lambda item: (item[1].ensemble, item[0])))


def method_signature(name: str) -> dict[str, inspect.Parameter]:
    """The options the method ``name`` takes, in the order of its signature (a subclass's own
    options first, then those it passes on to its base through ``**options``), with their
    defaults (``inspect.Parameter.empty`` for a required one)."""
    check.choice(None, "method", name, METHODS)
    found: dict[str, inspect.Parameter] = {}
    for cls in METHODS[name].__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        parameters = list(inspect.signature(init).parameters.values())[1:]
        for parameter in parameters:
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                found.setdefault(parameter.name, parameter)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return found


def method_parameters(name: str) -> tuple[str, ...]:
    """The names of the options of the method ``name`` (see :func:`method_signature`)."""
    return tuple(method_signature(name))


def option_help(name: str) -> dict[str, str]:
    """What each option of the method ``name`` is, from the ``option_help`` of the class that
    declares it (a subclass's text wins over its base's)."""
    texts: dict[str, str] = {}
    for cls in METHODS[name].__mro__:
        for option, text in vars(cls).get("option_help", {}).items():
            texts.setdefault(option, text)
    return {option: texts[option] for option in method_parameters(name)}


def check_options(name: str, options) -> None:
    """Refuses options the method ``name`` does not take and required ones missing from
    ``options`` (names), naming them."""
    signature = method_signature(name)
    unknown = [option for option in options if option not in signature]
    if unknown:
        raise ValueError(f"{name}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                         f"(it takes: {', '.join(signature) or 'none'})")
    missing = [option for option, parameter in signature.items()
               if parameter.default is inspect.Parameter.empty and option not in options]
    if missing:
        texts = option_help(name)
        raise ValueError(f"{name}: missing option{'s' if len(missing) > 1 else ''} "
                         + ", ".join(f"{option} ({texts[option]})" for option in missing))


def build_method(name: str, **options) -> Method:
    """The method ``name`` with ``options``; unknown and missing options are errors naming them."""
    check_options(name, options)
    return METHODS[name](**options)


__all__ = ["Method", "METHODS", "build_method", "check_options", "method_parameters", "method_signature",
           "option_help", *(cls.__name__ for cls in METHODS.values())]
globals().update({cls.__name__: cls for cls in METHODS.values()})
