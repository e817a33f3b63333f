"""Config plumbing: the OmegaConf resolvers used by ``conf/``, and plain-Python conversion."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The checkout (holding ``conf/`` and ``train.py``) when running from one; for an installed
wheel, the directory the package is installed in."""

PACKAGED_CONF = Path(__file__).resolve().parents[1] / "conf"
"""The config tree a built wheel carries inside the package (``lightreasoner/conf/``: the
checkout's ``conf/``, mapped there by ``pyproject.toml``); absent in a checkout."""


def config_dir() -> Path:
    """The config tree every command composes (``train.yaml`` and one folder per group): the
    copy inside the installed package when there is one, else the checkout's top-level ``conf/``
    (a checkout, with or without ``pip install -e .``)."""
    return PACKAGED_CONF if (PACKAGED_CONF / "train.yaml").is_file() else PROJECT_ROOT / "conf"


SHORT_NAME_MAX = 48
"""Longest override string :func:`short_name` keeps as it is."""


def short_name(text: Any) -> str:
    """A job's override string as a directory-name part: kept when short and free of path
    separators, else a 10-character hash of it (the full overrides are in the job's
    ``.hydra/overrides.yaml``), so a sweep sub-directory never passes the 255-byte limit."""
    text = "" if text is None else str(text)
    if len(text) <= SHORT_NAME_MAX and "/" not in text and "\\" not in text:
        return text
    return "h" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


SWEEP_FUNCTIONS = ("range(", "choice(", "interval(", "glob(", "tag(")


def _is_sweep_value(value: str) -> bool:
    """True for a command-line sweep value (``a,b``, ``range(...)``, ``choice(...)``, ...)."""
    depth, quote = 0, None
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return value.strip().startswith(SWEEP_FUNCTIONS)


def swept_keys(argv: list[str], sweeper_params: Any = None) -> set[str]:
    """Keys a multirun sweeps: those of ``hydra.sweeper.params`` and the command-line overrides
    whose value is a sweep."""
    keys = {str(k) for k in (sweeper_params or {})}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not key.startswith("-") and _is_sweep_value(value):
            keys.add(key.lstrip("+~"))
    return keys


def unknown_group_option(argv: list[str], conf_dir: Path | None = None) -> str | None:
    """One line naming the first command-line choice of a config group that has no such option
    (``model_pair=nope``: ``conf/model_pair/nope.yaml`` does not exist), else None. Hydra's own
    report of it is a screenful (options, search path, a hint); train.py prints this line instead.
    Only plain values are checked (``a`` or a sweep ``a,b``); anything else is left to Hydra."""
    conf_dir = conf_dir or config_dir()
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or not key or key.startswith("-") or "/" in key or "@" in key or key == "hydra":
            continue
        group = conf_dir / key
        if not group.is_dir() or not re.fullmatch(r"[\w.-]+(,[\w.-]+)*", value):
            continue
        options = sorted(p.stem for p in group.glob("*.yaml"))
        for choice in value.split(","):
            if choice not in options and choice != "null":
                return f"{key}={choice}: no such option (conf/{key}/{choice}.yaml); expected one of {options}"
    return None


def sweep_subdir_name(*, _root_: Any) -> str:
    """The swept part of a multirun job's overrides, e.g. ``selection.alpha=0.1,selection.beta=0.0``
    (:func:`short_name` of it): the fixed overrides of a long command line are left out, so the
    job directory says what differs between jobs."""
    import sys

    hydra = _root_.hydra
    overrides = [str(o) for o in hydra.overrides.task]
    params = hydra.sweeper.get("params") if "sweeper" in hydra else None
    swept = swept_keys(sys.argv[1:], params)
    items = sorted(o for o in overrides if o.partition("=")[0].lstrip("+~") in swept)
    return short_name(",".join(items) if items else hydra.job.override_dirname)


RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
"""A run name: letters, digits, ``.``, ``_``, ``-``; ``/`` separates sub-folders (no ``..``)."""


def check_run_name(run_name: Any) -> None:
    """``run_name``: a relative name under ``outputs/`` (:data:`RUN_NAME_RE`: never ``..``, never absolute)."""
    if run_name is not None and run_name != "" and not RUN_NAME_RE.match(str(run_name)):
        raise ValueError(f"run_name: expected letters, digits, '.', '_' or '-' (and '/' between parts, no '..'), got {str(run_name)!r}")


def run_dir_name(run_name: Any, fallback: str) -> str:
    """``${lr_run_dir:${run_name},<timestamp>}``: the run's directory name under ``outputs/``
    (``multirun/``): ``run_name`` when given (a fixed, resumable place), else ``fallback``."""
    if run_name is None or run_name == "":
        return str(fallback)
    check_run_name(run_name)
    return str(run_name)


MOVED_KEYS = {
    "sampling.beta": "selection.beta", "sampling.alpha": "selection.alpha", "sampling.first_step": "selection.first_step",
    "method.beta": "selection.beta", "method.alpha": "selection.alpha", "method.steps": "selection.rule",
    "method.target": "selection.target", "distill.rounds": "rounds",
}
"""Keys that moved to one home (issue 30), by their old spelling -> their key now: the command
line (:mod:`lightreasoner.run.cli`) and validation name the new key for an old one."""


def register_resolvers() -> None:
    """Register ``${lr_project_root:}`` (the checkout holding ``conf/`` and ``train.py``),
    ``${lr_short:text}`` (:func:`short_name`), ``${lr_run_dir:name,fallback}`` (:func:`run_dir_name`)
    and ``${lr_sweep_subdir:}`` (:func:`sweep_subdir_name`)."""
    if not OmegaConf.has_resolver("lr_project_root"):
        OmegaConf.register_new_resolver("lr_project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("lr_short"):
        OmegaConf.register_new_resolver("lr_short", short_name)
    if not OmegaConf.has_resolver("lr_run_dir"):
        OmegaConf.register_new_resolver("lr_run_dir", run_dir_name)
    if not OmegaConf.has_resolver("lr_sweep_subdir"):
        OmegaConf.register_new_resolver("lr_sweep_subdir", sweep_subdir_name)


def settings_of(cls: type, cfg: Any, group: str):
    """A settings dataclass from a config group's mapping (an instance passes through), not yet
    validated: unknown keys are one error naming the group and the keys it knows."""
    if isinstance(cfg, cls):
        return cfg
    d = dict(to_plain(cfg) or {})
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{group}: unknown field(s) {unknown}; expected some of {sorted(known)}")
    return cls(**d)


def settings_from_cfg(cls: type, cfg: Any, group: str):
    """:func:`settings_of`, then the instance validates itself (``validate()``)."""
    settings = settings_of(cls, cfg, group)
    settings.validate()
    return settings


def to_plain(obj: Any) -> Any:
    """OmegaConf containers -> plain Python, resolved (other values unchanged; ``None`` stays)."""
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


register_resolvers()
