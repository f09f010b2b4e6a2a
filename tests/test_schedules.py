"""The learning-rate curve at its key points, worked out by hand."""

import pytest

from autolab.schedules import lr_at

KW = dict(peak_lr=1.0, initial_lr=0.1, warmup=0.2, min_lr_ratio=0.1)


def test_warmup_is_linear_from_initial_to_peak():
    assert lr_at(0.0, **KW) == pytest.approx(0.1)
    assert lr_at(0.1, **KW) == pytest.approx(0.55)  # halfway through warmup
    assert lr_at(0.2, **KW) == pytest.approx(1.0)


def test_cosine_decays_to_min_lr():
    assert lr_at(0.6, **KW) == pytest.approx(0.55)  # halfway through decay: (peak + min) / 2
    assert lr_at(1.0, **KW) == pytest.approx(0.1)  # min_lr = 0.1 * peak
    assert lr_at(1.5, **KW) == pytest.approx(0.1)  # progress is clamped


def test_no_warmup_starts_at_peak():
    assert lr_at(0.0, peak_lr=3e-3) == pytest.approx(3e-3)
    assert lr_at(0.5, peak_lr=3e-3) == pytest.approx(3e-3 * 0.55)


def test_warmup_stable_decay_holds_the_peak_then_falls_linearly():
    kw = dict(peak_lr=1.0, warmup=0.1, min_lr_ratio=0.0, decay="linear", warmdown=0.4)
    assert lr_at(0.05, **kw) == pytest.approx(0.5)  # warming up
    assert lr_at(0.3, **kw) == lr_at(0.6, **kw) == pytest.approx(1.0)  # stable until 1 - warmdown
    assert lr_at(0.8, **kw) == pytest.approx(0.5)  # halfway down
    assert lr_at(1.0, **kw) == pytest.approx(0.0)
    # a warmdown longer than what follows warmup starts at the end of warmup
    assert lr_at(0.55, peak_lr=1.0, warmup=0.1, min_lr_ratio=0.0, decay="linear", warmdown=1.0) == pytest.approx(0.5)
