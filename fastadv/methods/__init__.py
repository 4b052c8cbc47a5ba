"""Training methods: each turns a batch into a loss (see base.Method and METHODS.md)."""
from __future__ import annotations

import inspect

from .alp import ALP
from .base import Method
from .label_smoothing import LabelSmoothing
from .lma import LMAAT, MARTLMA, PGDATLMA, TRADESLMA
from .lrm import LRM
from .ltd import LTD
from .mart import MART
from .pgd_at import PGDAT
from .standard import Standard
from .trades import TRADES

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    Standard, PGDAT, TRADES, MART, ALP, LabelSmoothing, LRM, PGDATLMA, TRADESLMA, MARTLMA, LMAAT, LTD)}


def method_parameters(name: str) -> tuple[str, ...]:
    """The options the method ``name`` takes, in the order of its signature (a subclass's own
    options first, then those it passes on to its base through ``**options``)."""
    names = []
    for cls in METHODS[name].__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        parameters = list(inspect.signature(init).parameters.values())[1:]
        names += [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return tuple(names)


def build_method(name: str, **options) -> Method:
    """The method ``name`` with ``options`` (unknown options are an error naming them)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    accepted = method_parameters(name)
    unknown = [option for option in options if option not in accepted]
    if unknown:
        raise ValueError(f"method {name!r} does not take these options: {', '.join(unknown)} "
                         f"(it takes: {', '.join(accepted) or 'none'})")
    try:
        return METHODS[name](**options)
    except TypeError as error:
        raise ValueError(f"method {name!r}: {error}") from None


__all__ = ["Method", "METHODS", "build_method", "method_parameters", "Standard", "PGDAT", "TRADES", "MART", "ALP",
           "LabelSmoothing", "LRM", "PGDATLMA", "TRADESLMA", "MARTLMA", "LMAAT", "LTD"]
