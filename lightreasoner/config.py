"""OmegaConf resolvers used by the configs under ``conf/``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def register_resolvers() -> None:
    """Register ``${lr_project_root:}`` (the checkout holding ``conf/`` and ``train.py``)."""
    if not OmegaConf.has_resolver("lr_project_root"):
        OmegaConf.register_new_resolver("lr_project_root", lambda: str(PROJECT_ROOT))


register_resolvers()
