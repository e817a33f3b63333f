"""The experiment logger a run's stages share, from the ``logger`` config group.

``build_logger(cfg)`` instantiates ``cfg.logger`` (``_target_``: a Lightning logger, or null
for none). W&B falls back to offline mode when this machine is not logged in, so a run never
blocks on the network; offline runs are synced later with ``wandb sync``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger("lightreasoner")


def wandb_logged_in() -> bool:
    """True when an API key is configured for api.wandb.ai (``~/.netrc``)."""
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def build_logger(cfg: DictConfig):
    """The run's Lightning logger, or ``False`` when ``logger`` is ``none``."""
    if cfg.logger is None or cfg.logger.get("_target_") is None:
        return False
    kwargs: dict[str, Any] = {}
    if "WandbLogger" in str(cfg.logger._target_) and not cfg.logger.get("offline", False):
        if not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") or wandb_logged_in()):
            log.warning("logger: wandb is not logged in here; logging offline (sync later with `wandb sync`)")
            kwargs["offline"] = True
    return instantiate(cfg.logger, **kwargs)
