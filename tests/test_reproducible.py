"""The IEEE-exact arithmetic of tools/reproducible.py, which the training steps its
optimiser with (the optimiser itself needs PyTorch: `train_classifier.py check` compares
it with torch's AdamW + OneCycleLR)."""

import math
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import reproducible  # noqa: E402


def test_cosine_is_libm_cosine_to_the_last_bits():
    xs = np.linspace(0.0, math.pi, 2001)
    worst = max(abs(reproducible.cosine(float(x)) - math.cos(float(x))) for x in xs)
    assert worst < 1e-15
    assert reproducible.cosine(0.0) == 1.0


def test_power_is_repeated_multiplication():
    assert reproducible.power(0.999, 0) == 1.0
    assert reproducible.power(0.5, 10) == 2.0**-10  # exact in binary
    assert reproducible.power(0.999, 500) == pytest.approx(0.999**500, rel=1e-13)


def test_one_cycle_follows_torchs_default_policy():
    total, top = 1000, 3e-4
    lrs, betas = zip(*(reproducible.one_cycle(t, total, top) for t in range(total)), strict=True)
    peak = int(np.argmax(lrs))
    assert peak == round(0.3 * total - 1)  # OneCycleLR's pct_start 0.3
    assert lrs[0] == pytest.approx(top / 25)
    assert lrs[peak] == pytest.approx(top)
    assert lrs[-1] == pytest.approx(top / 25 / 1e4)
    assert betas[0] == pytest.approx(0.95) and betas[peak] == pytest.approx(0.85)
    assert betas[-1] == pytest.approx(0.95)
    assert all(a <= b for a, b in zip(lrs[: peak + 1], lrs[1 : peak + 1], strict=False))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))
    assert lrs[500] == pytest.approx(  # halfway down the cosine from its peak
        top / 25 / 1e4
        + (top - top / 25 / 1e4) * (math.cos(math.pi * (500 - peak) / (999 - peak)) + 1) / 2
    )


def test_numerics_are_pinned_before_torch_is_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", object())
    with pytest.raises(RuntimeError, match="before torch is imported"):
        reproducible.pin_numerics(2)
