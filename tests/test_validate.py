"""fastadv._validate: one wording for every argument check ("owner: name must be ..., got ...")."""
import math
import re

import pytest
import torch

from fastadv import _validate as check

CPU = torch.device("cpu")


@pytest.mark.parametrize("call, error, message", [
    (lambda: check.number("PGD", "kappa", -1.0, low=0.0), ValueError, "PGD: kappa must be >= 0, got -1.0"),
    (lambda: check.number("mhuber", "alpha", 0.0, low=0.0, low_open=True), ValueError,
     "mhuber: alpha must be > 0, got 0.0"),
    (lambda: check.number(None, "lr", math.nan, low=0.0), ValueError, "lr must be >= 0, got nan"),
    (lambda: check.number("lma", "ema_decay", 1.0, low=0.0, high=1.0, high_open=True), ValueError,
     "lma: ema_decay must be in [0, 1), got 1.0"),
    (lambda: check.number("PGD", "kappa", "big"), TypeError, "PGD: kappa must be a number, got str"),
    (lambda: check.number("PGD", "kappa", True), TypeError, "PGD: kappa must be a number, got bool"),
    (lambda: check.integer("PGD", "steps", 0), ValueError, "PGD: steps must be an integer >= 1, got 0"),
    (lambda: check.integer("PGD", "steps", 2.0), TypeError, "PGD: steps must be an integer, got float"),
    (lambda: check.integer("op", "k", 9, low=1, high=8), ValueError, "op: k must be an integer in [1, 8], got 9"),
    (lambda: check.choice("PGD", "norm", "l3", ("linf", "l2")), ValueError,
     "PGD: norm must be one of 'linf', 'l2', got 'l3'"),
    (lambda: check.flag("PGD", "early_stop", 1), TypeError, "PGD: early_stop must be a bool, got int"),
    (lambda: check.radius("PGD", "eps", -0.1), ValueError, "PGD: eps must be >= 0, got -0.1"),
    (lambda: check.radius("PGD", "eps", torch.tensor([0.1, -0.1])), ValueError,
     "PGD: every entry of eps must be >= 0 (and not NaN)"),
    (lambda: check.radius("PGD", "eps", torch.tensor([0.1, math.nan])), ValueError, "PGD: every entry of eps must be >= 0 (and not NaN)"),
    (lambda: check.radius("PGD", "eps", torch.ones(3), like=torch.zeros(2, 4)), ValueError,
     "PGD: eps must be a float or have shape [B] = [2], got [3]"),
    (lambda: check.radius("PGD", "eps", torch.ones(2, dtype=torch.int64)), TypeError,
     "PGD: eps must be a floating-point tensor, got dtype torch.int64"),
    (lambda: check.clip_range("PGD", (1.0, 0.0)), ValueError, "PGD: clip must satisfy min <= max, got (1.0, 0.0)"),
    (lambda: check.clip_range("PGD", "box"), TypeError, "PGD: clip must be a pair"),
    (lambda: check.tensor("op", "z", torch.zeros(2, dtype=torch.int64)), TypeError,
     "op: z must be a floating-point tensor, got dtype torch.int64"),
    (lambda: check.tensor("op", "z", torch.zeros(2, 3), dim=3), ValueError, "op: z must have 3 dimensions, got shape [2, 3]"),
    (lambda: check.tensor("op", "z_adv", torch.zeros(2, 4), like=torch.zeros(2, 3), like_name="z_nat"), ValueError,
     "op: z_adv must have the shape of z_nat [2, 3], got [2, 4]"),
    (lambda: check.labels("op", torch.tensor([0, 3]), batch=2, classes=3, device=CPU), ValueError,
     "op: every label in y must lie in [0, 3) for 3 classes, got labels from 0 to 3"),
    (lambda: check.labels("op", torch.tensor([0.0, 1.0]), batch=2, classes=3, device=CPU), TypeError,
     "op: y must be an integer tensor of class indices, got torch.float32"),
    (lambda: check.labels("op", torch.tensor([0, 1, 2]), batch=2, classes=3, device=CPU), ValueError,
     "op: y must have shape [B] = [2], got [3]"),
])
def test_errors_name_the_owner_and_the_argument(call, error, message):
    with pytest.raises(error, match="^" + re.escape(message)):
        call()


def test_accepted_values_come_back_in_the_form_the_ops_take():
    assert check.number("op", "x", torch.tensor(0.5), low=0.0) == 0.5
    assert check.number("op", "x", None, allow_none=True) is None
    assert check.integer("op", "k", 3) == 3
    x = torch.zeros(2, 4, dtype=torch.float64)
    eps = check.radius("op", "eps", torch.tensor([0.1, 0.2], dtype=torch.float32), like=x, dtype=torch.float64)
    assert eps.dtype == torch.float64 and eps.is_contiguous() and not eps.requires_grad
    assert check.clip_range("op", None) == (-math.inf, math.inf)
    y = check.labels("op", torch.tensor([2, 0], dtype=torch.uint8), batch=2, classes=3, device=CPU)
    assert y.dtype == torch.int64 and y.tolist() == [2, 0]
    # classes=None: the values are not read (the caller checked them already)
    assert check.labels("op", torch.tensor([7, 9]), batch=2, classes=None, device=CPU).tolist() == [7, 9]
