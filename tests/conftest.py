"""Shared fixtures: tiny models and tokenizers built in code, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for train.py subprocesses

import torch  # noqa: E402

# Tiny models: one thread is fastest and keeps timings steady on a shared 2-core machine.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LIGHTREASONER_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"benchmark data not found at {DATA_DIR} (set LIGHTREASONER_DATA)")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_pair_dirs(tmp_path_factory):
    """A tiny expert / amateur pair on disk (char tokenizer; amateur with 5 extra logit ids)."""
    from lightreasoner.models.tiny import build_char_tokenizer, build_tiny_model, save_pair_member

    root = tmp_path_factory.mktemp("tiny_pair")
    tok = build_char_tokenizer()
    expert = build_tiny_model(tok, seed=1, hidden_size=48, num_layers=2)
    amateur = build_tiny_model(tok, seed=2, hidden_size=32, num_layers=1, extra_vocab=5)
    return {
        "expert": str(save_pair_member(expert, tok, root / "expert")),
        "amateur": str(save_pair_member(amateur, tok, root / "amateur")),
    }
