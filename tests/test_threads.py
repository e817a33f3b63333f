"""Thread counts per stage: the demo's tiny models run on one thread (a busy machine slows them in
proportion instead of collapsing them), real models keep torch's default; config and env override."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import lightreasoner.core.config  # noqa: F401
from lightreasoner.run.validation import STAGE_NAMES, stage_threads

CONF = Path(__file__).resolve().parents[1] / "conf"


def _cfg(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    cfg.paths.output_dir = "/tmp/lr-threads-test"  # no Hydra run here to fill it
    cfg.trainer.default_root_dir = "/tmp/lr-threads-test"
    return cfg


def test_auto_is_one_thread_for_the_demo_and_torch_default_for_real_models(monkeypatch):
    monkeypatch.delenv("LIGHTREASONER_THREADS", raising=False)
    assert [stage_threads(_cfg(), s) for s in STAGE_NAMES] == [1, 1, 1, 1]
    assert [stage_threads(_cfg("experiment=coder_cpu"), s) for s in STAGE_NAMES] == [None] * 4
    monkeypatch.setenv("LIGHTREASONER_THREADS", "3")
    assert stage_threads(_cfg(), "sample") == 3 and stage_threads(_cfg("experiment=coder_cpu"), "evaluate") == 3
    assert stage_threads(_cfg("threads=2"), "sample") == 2  # an explicit value beats the environment
    assert [stage_threads(_cfg("threads={distill: 2}"), s) for s in STAGE_NAMES] == [3, 3, 2, 3]


@pytest.mark.parametrize("override, message", [
    ("threads=0", "threads: expected 'auto', an integer >= 1"),
    ("threads=many", "threads: expected 'auto', an integer >= 1"),
    ("threads={train: 2}", r"threads: unknown stage\(s\) \['train'\]"),
])
def test_bad_threads_are_one_clear_error(override, message):
    from lightreasoner.run.validation import validate

    with pytest.raises(ValueError, match=message):
        validate(_cfg(override))


def test_bad_env_threads(monkeypatch):
    monkeypatch.setenv("LIGHTREASONER_THREADS", "two")
    with pytest.raises(ValueError, match="LIGHTREASONER_THREADS: expected an integer >= 1"):
        stage_threads(_cfg(), "sample")
