"""bench/diagnose.py: the diagnostic's teacher forcing timed beside the bare forward passes of
both models over the same token batches (a smoke run on the shipped demo pair)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_diagnose", REPO / "bench" / "diagnose.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_floor_and_diagnostic_side_by_side(tmp_path, capsys):
    bench = _bench()
    assert bench.main(["--n", "4", "--batch-size", "2", "--repeat", "1", f"paths.cache_dir={tmp_path / 'cache'}"]) == 0
    out = capsys.readouterr().out
    assert "4 references" in out
    ratio = float(re.search(r"ratio diagnostic / floor: ([0-9.]+)", out).group(1))
    assert ratio > 0


def test_bad_counts_are_one_error_line(capsys):
    assert _bench().main(["--n", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --n")
