"""Config plumbing: the OmegaConf resolvers used by ``conf/``, and plain-Python conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def register_resolvers() -> None:
    """Register ``${lr_project_root:}`` (the checkout holding ``conf/`` and ``train.py``)."""
    if not OmegaConf.has_resolver("lr_project_root"):
        OmegaConf.register_new_resolver("lr_project_root", lambda: str(PROJECT_ROOT))


def to_plain(obj: Any) -> Any:
    """OmegaConf containers -> plain Python, resolved (other values unchanged; ``None`` stays)."""
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


register_resolvers()
