"""The progress display: the token bar's lines stay whole whatever interrupts it."""
from __future__ import annotations

import io
import sys

import pytest

from fastcodellama.progress import TokenProgress, expected_total


def test_ctrl_c_as_the_bar_first_shows_still_ends_its_line(monkeypatch):
    """A KeyboardInterrupt inside __enter__ (the bar's first display) skips the `with` block's
    __exit__: the bar must end its line itself, so that "interrupted: ..." starts a line of its own."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = TokenProgress(4, 10)
    shown = bar.bar.refresh

    def interrupted_after_showing(*args, **kwargs):
        shown(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(bar.bar, "refresh", interrupted_after_showing)
    with pytest.raises(KeyboardInterrupt):
        with bar:
            pass
    assert "tokens" in err.getvalue() and err.getvalue().endswith("\n")


def test_the_estimate_starts_as_an_upper_bound_and_sharpens():
    assert expected_total([], [], 4, 100) == 400
    assert expected_total([20, 30], [10], 1, 100) == 20 + 30 + 25 + 25
