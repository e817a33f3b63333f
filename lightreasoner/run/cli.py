"""What ``train.py`` does before Hydra starts a run: compose every job and check it, in a second.

``python train.py ...`` calls :func:`preflight` first. It composes the config exactly as Hydra
will (the same ``conf/``, the same overrides; for ``-m`` every job of the sweep, as Hydra's
basic sweeper lists them) and runs :func:`lightreasoner.run.validation.validate` on each, before
any heavy import (torch, Lightning) and before Hydra creates a run directory. So:

- a bad input is one line ``error: <key>: ...`` on stderr and exit code 2, and leaves no
  ``outputs/`` or ``multirun/`` directory behind;
- a mistyped key is one line with the key it probably meant (``selection.betta=0.3`` ->
  ``did you mean selection.beta?``), not Hydra's advice to add it with ``+``;
- ``python train.py -m <sweep> --cfg job`` (or ``--jobs``) previews a multirun: the list of
  its jobs and their overrides, each checked, without running anything.

The other Hydra flags (``--help``, ``--cfg``, ``--info``, ``--resolve``, ``-p``) are left to
Hydra once the config composes.
"""

from __future__ import annotations

import difflib
import re
import sys
from typing import Any

from lightreasoner.core.config import MOVED_KEYS, config_dir, unknown_group_option

PLACEHOLDER_OUTPUT = "/nonexistent/lightreasoner-preflight"
"""``paths.output_dir`` while checking (Hydra fills it when the job starts; nothing is written there)."""

HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "--config-path", "-cp", "--config-name",
                          "-cn", "--config-dir", "-cd", "--experimental-rerun"}
"""Hydra command-line flags followed by a value (``--cfg job``); ``--info`` takes an optional one."""

INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


class PreflightError(ValueError):
    """A bad command line: one line, exit code 2."""


def split_argv(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """``(overrides, flags)``: the ``key=value`` overrides and Hydra's own flags."""
    overrides: list[str] = []
    flags: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-m", "--multirun"):
            flags["multirun"] = True
        elif arg in ("--jobs",):
            flags["jobs"] = True
        elif arg in ("-h", "--help", "--hydra-help", "--version", "--shell-completion", "-sc", "--run", "-r"):
            flags[arg] = True
        elif arg.startswith("-") and "=" in arg and arg.split("=", 1)[0] in HYDRA_FLAGS_WITH_VALUE:
            flags[arg.split("=", 1)[0]] = arg.split("=", 1)[1]
        elif arg in HYDRA_FLAGS_WITH_VALUE:
            if arg == "--info" and (i + 1 >= len(argv) or argv[i + 1] not in INFO_VALUES):
                flags[arg] = "all"
            else:
                flags[arg] = argv[i + 1] if i + 1 < len(argv) else None
                i += 1
        elif arg.startswith("-"):
            flags[arg] = True
        else:
            overrides.append(arg)
        i += 1
    return overrides, flags


def flat_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a composed config (containers and leaves), unresolved."""
    from omegaconf import DictConfig

    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            child = node._get_node(k)
            if isinstance(child, DictConfig):
                keys.extend(flat_keys(child, full + "."))
    return keys


def suggest(key: str, candidates: list[str]) -> str:
    """`` (did you mean X?)`` for the closest known key, else an empty string."""
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:  # a typo in the last part only: compare within the same group
        head, _, last = key.rpartition(".")
        siblings = [c.rpartition(".")[2] for c in candidates if c.rpartition(".")[0] == head]
        near = difflib.get_close_matches(last, siblings, n=1, cutoff=0.5)
        close = [f"{head}.{near[0]}" if head else near[0]] if near else []
    return f" (did you mean {close[0]}?)" if close else ""


def _composition_error(err: Exception, overrides: list[str], known: list[str]) -> PreflightError:
    """Hydra's multi-line composition error as one line naming the key."""
    text = str(err)
    m = re.search(r"full_key: (\S+)", text) or re.search(r"Could not override '([^']+)'", text)
    if m and ("not in struct" in text or "To append to your config use" in text):
        key = m.group(1)
        if key in MOVED_KEYS:
            value = next((o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+~") == key), "...")
            return PreflightError(f"{key}: moved to {MOVED_KEYS[key]}; write {MOVED_KEYS[key]}={value}")
        if key not in [o.partition("=")[0].lstrip("+~") for o in overrides]:  # a key inside a merged value
            return PreflightError(f"{key}: no such key{suggest(key, known)} (set by {', '.join(o for o in overrides if key.startswith(o.partition('=')[0].lstrip('+~')))})")
        value = next((o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("~") == key), "")
        return PreflightError(f"{key}: no such key{suggest(key, known)}; "
                              f"to add a new key on purpose write +{key}={value}")
    m = re.search(r"Could not (?:append to|delete from) config\. '([^']+)'", text)
    if m:
        return PreflightError(f"{m.group(1)}: {text.splitlines()[0]}")
    if "Ambiguous value" in text or "multirun" in text.lower() and "sweep" in text.lower():
        return PreflightError(f"{text.splitlines()[0]} (a sweep needs -m; preview its jobs with -m ... --cfg job)")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return PreflightError(first)


class Composer:
    """Hydra's compose API over the project's ``conf/`` (:func:`~lightreasoner.core.config.config_dir`), kept open for every job of a sweep."""

    def __init__(self) -> None:
        from hydra import initialize_config_dir

        self._ctx = initialize_config_dir(str(config_dir()), version_base="1.3", job_name="train")
        self._ctx.__enter__()
        self._known: list[str] | None = None

    def close(self) -> None:
        self._ctx.__exit__(None, None, None)

    def known_keys(self) -> list[str]:
        if self._known is None:
            from hydra import compose

            self._known = flat_keys(compose("train", overrides=[]))
        return self._known

    def compose(self, overrides: list[str], hydra_config: bool = False):
        from hydra import compose
        from hydra.errors import HydraException
        from omegaconf import open_dict
        from omegaconf.errors import OmegaConfBaseException

        try:
            cfg = compose("train", overrides=list(overrides), return_hydra_config=hydra_config)
        except (HydraException, OmegaConfBaseException) as err:
            known = self.known_keys() if "not in struct" in str(err) or "Could not override" in str(err) else []
            raise _composition_error(err, overrides, known) from None
        if not hydra_config:
            with open_dict(cfg):
                cfg.paths.output_dir = PLACEHOLDER_OUTPUT
        return cfg


def sweep_jobs(composer: Composer, overrides: list[str]) -> tuple[list[list[str]], str | None]:
    """The override lists of a multirun's jobs, as Hydra's basic sweeper lists them
    (``hydra.sweeper.params`` of the composed config, then the command line), and a note when
    the configured sweeper chooses its jobs at run time (Optuna: only the first is known)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    base = composer.compose(fixed, hydra_config=True)
    sweeper = base.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    params = {str(k): str(v) for k, v in (sweeper.get("params") or {}).items()}
    if target and not target.endswith("BasicSweeper"):
        note = f"the sweeper {target.rsplit('.', 1)[-1]} chooses its jobs while it runs; checked: its search space's first values"
        first = [f"{k}={_first_value(parser, k, v)}" for k, v in params.items()]
        swept = [o.input_line for o in parsed if o.is_sweep_override()]
        jobs = BasicSweeper.split_arguments(parser.parse_overrides(fixed + swept), None)[0] if swept else [fixed]
        return [job + first for job in jobs], note
    all_params = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    batches = BasicSweeper.split_arguments(parser.parse_overrides(all_params), None)
    return [job for batch in batches for job in batch], None


def _first_value(parser, key: str, value: str) -> str:
    """A value from a sweeper's search space (the start of an interval, the first choice)."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    sweep = parser.parse_override(f"{key}={value}").value()
    if isinstance(sweep, IntervalSweep):
        return repr(sweep.start)
    if isinstance(sweep, (ChoiceSweep,)):
        return str(sweep.list[0])
    if isinstance(sweep, RangeSweep):
        return repr(sweep.start)
    return str(value)


def check_jobs(argv: list[str], out=None, light: bool = False) -> list[list[str]]:
    """Compose and validate every job ``argv`` describes; raise :class:`PreflightError` (or the
    validator's ``ValueError``/``OSError``) on the first bad one. Returns the jobs' overrides.
    With ``out`` (a stream), a multirun's jobs are listed on it as they are checked. ``light``:
    only the checks that need no torch (:func:`~lightreasoner.run.validation.validate_light`)."""
    overrides, flags = split_argv(argv)
    bad = unknown_group_option(overrides)
    if bad:
        raise PreflightError(bad)
    composer = Composer()
    try:
        if flags.get("multirun"):
            jobs, note = sweep_jobs(composer, overrides)
        else:
            jobs, note = [overrides], None
        from lightreasoner.run.validation import validate, validate_light

        check = validate_light if light else validate

        if out is not None:
            print(f"{len(jobs)} job(s){' (' + note + ')' if note else ''}:", file=out)
        for i, job in enumerate(jobs):
            try:
                check(composer.compose(job))
            except (ValueError, OSError, ImportError) as err:
                where = f"job {i} ({' '.join(job)}): " if len(jobs) > 1 else ""
                raise PreflightError(f"{where}{err}") from None
            if out is not None:
                print(f"  {i}: {' '.join(job) if job else '(no overrides)'}", file=out)
        return jobs
    finally:
        composer.close()


def preflight(argv: list[str]) -> int | None:
    """Check the command line before Hydra runs it. Returns an exit code to stop with (2: bad
    input, printed as one ``error:`` line; 0: a multirun preview was printed), or None to go on."""
    overrides, flags = split_argv(argv)
    if any(flags.get(f) for f in ("-h", "--help", "--hydra-help", "--version", "--shell-completion", "-sc")):
        return None  # Hydra's own help: nothing to compose
    preview = flags.get("jobs") or (flags.get("multirun") and flags.get("--cfg") is not None)
    if flags.get("jobs") and not flags.get("multirun"):
        print("error: --jobs lists a multirun's jobs; add -m", file=sys.stderr)
        return 2
    printing = not preview and any(flags.get(f) is not None for f in ("--cfg", "-c", "--info", "--package", "-p"))
    try:  # printing the config (--cfg job): the quick checks only, so it answers in a second
        check_jobs(argv, out=sys.stdout if preview else None, light=printing)
    except (ValueError, OSError, ImportError) as err:  # ImportError: an optional extra (generation=vllm) not installed
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    return 0 if preview else None
