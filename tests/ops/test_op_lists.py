"""Every op family knows its list: each fused op of a family (a name of its module's ``__all__``
that runs a registered kernel) has a reference oracle, a test that calls it and a benchmark row.
A new op added to a family's list without the three fails here, by name."""
import tokenize
from pathlib import Path

import pytest

from fastadv import ops
from fastadv import reference

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("pgd", "logits", "simplex", "contrastive")


def fused_ops(family: str) -> list[str]:
    """The family's public ops that run a registered kernel (``pgd_init``, a random start, and
    ``two_view_pair``, a reshape, are helpers of the family, not fused ops)."""
    module = getattr(ops, family)
    kernels = set(module._FAMILY.cpp)
    return [name for name in module.__all__ if name in kernels]


def calls(name: str, paths) -> bool:
    """Whether the code of any of ``paths`` names ``name`` (a call, or the function handed on):
    a Python name token, so strings and comments do not count."""
    for path in paths:
        with open(path, "rb") as source:
            if any(token.type == tokenize.NAME and token.string == name for token in tokenize.tokenize(source.readline)):
                return True
    return False


CASES = [(family, op) for family in FAMILIES for op in fused_ops(family)]


def test_every_family_has_ops():
    assert all(fused_ops(family) for family in FAMILIES)


@pytest.mark.parametrize("family,op", CASES, ids=[op for _, op in CASES])
def test_the_op_has_a_reference_a_test_and_a_benchmark_row(family, op):
    oracle = op.rstrip("_")  # an in-place op is checked against its out-of-place oracle
    assert callable(getattr(getattr(reference, family), oracle, None)), \
        f"{family}.{op}: no reference oracle fastadv.reference.{family}.{oracle}"
    tests = [p for p in (ROOT / "tests" / "ops").glob("test_*.py") if p.name != Path(__file__).name]
    assert calls(op, tests), f"{family}.{op}: no test in tests/ops calls it"
    assert calls(op, [ROOT / "benchmarks" / f"bench_{family}.py"]), \
        f"{family}.{op}: benchmarks/bench_{family}.py has no row that calls it"


def test_the_check_finds_a_missing_op(tmp_path):
    path = tmp_path / "bench.py"
    path.write_text("out = L.trades_kl(a, b)\nmasked_gram_like = 1  # masked_gram\nlabel = 'mhuber'\n")
    assert calls("trades_kl", [path]) and not calls("masked_gram", [path]) and not calls("kl", [path])
    assert not calls("mhuber", [path])
