"""Training methods: each turns a batch into a loss (see base.Method and METHODS.md)."""
from __future__ import annotations

from .base import Method
from .mart import MART
from .pgd_at import PGDAT
from .standard import Standard
from .trades import TRADES

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Standard, PGDAT, TRADES, MART)}


def build_method(name: str, **options) -> Method:
    """The method ``name`` with ``options`` (unknown options are an error naming them)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    try:
        return cls(**options)
    except TypeError as error:
        raise ValueError(f"method {name!r} does not take these options: {error}") from None


__all__ = ["Method", "METHODS", "build_method", "Standard", "PGDAT", "TRADES", "MART"]
