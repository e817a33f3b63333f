"""The ``lightreasoner`` command (``python -m lightreasoner``; ``python train.py`` is its ``train``).

    lightreasoner                                    # the offline demo, end to end (= python train.py)
    lightreasoner experiment=coder_cpu               # the real offline Qwen2.5-Coder pair, CPU-sized
    lightreasoner train -m selection.beta=0.2,0.4 --jobs   # list a multirun's jobs (each checked), run nothing
    lightreasoner train --cfg job                    # the composed config, printed
    lightreasoner report multirun/2025-01-01/12-00-00      # = python -m lightreasoner.analysis.report ...
    lightreasoner diagnose model_pair=demo           # = python -m lightreasoner.run.diagnose ...
    lightreasoner bundle export outputs/NAME --to B  # = python -m lightreasoner.run.cache_bundle ...

``train`` (the default command) takes what ``python train.py`` takes: Hydra overrides, ``-m``,
``--cfg job``, ``--jobs``, ``--help``. Every job is composed and checked before anything heavy
is imported and before Hydra makes a run directory (:mod:`lightreasoner.run.cli`): a bad input
is one ``error:`` line and exit code 2. Output directories (``outputs/``, ``multirun/``) are
relative to the current directory. The config tree is
:func:`lightreasoner.core.config.config_dir`: the checkout's ``conf/``, or the copy an installed
wheel carries.
"""

from __future__ import annotations

import importlib
import re
import sys

from omegaconf import DictConfig

from lightreasoner.core.config import config_dir
from lightreasoner.run.cli import preflight

COMMANDS = {
    "train": (None, "(the default) sample -> distill -> evaluate as the config and overrides say (python train.py)"),
    "report": ("lightreasoner.analysis.report", "the sweep report: tables and plots of finished runs"),
    "diagnose": ("lightreasoner.run.diagnose", "a pair diagnostic: does the contrast point at the reference token?"),
    "bundle": ("lightreasoner.run.cache_bundle", "carry finished runs and the caches they read (export | import)"),
}
"""Command -> (the module whose ``main(argv)`` runs it, one line of help). A module is imported
only when its command runs, so ``--help`` and ``train --cfg job`` import no torch."""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: lightreasoner [train] [OVERRIDE ...] [-m] [--cfg job] [--jobs] [--help]",
             "       lightreasoner {report,diagnose,bundle} ...", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "train --help: Hydra's help and the config groups; report --help, bundle --help: their options;",
              "diagnose takes train's overrides and diagnose.<field>=<value>.", f"config tree: {config_dir()}"]
    return "\n".join(lines)


def train_job(cfg: DictConfig) -> float | None:
    """Hydra's task: run the stages; returns the objective (tuned accuracy) for hyper-parameter sweepers."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lightreasoner.run.main import run  # torch and Lightning: imported once the job is checked

    try:
        return run(cfg).objective
    except (ValueError, OSError, ImportError) as err:  # bad input, a missing file, a full disk or read-only dir
        print(f"error: {err}", file=sys.stderr)  # once; summary.json and the job's log record it too
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records this job as failed, runs the others, then reports it
        sys.exit(2)


def train(argv: list[str]) -> int | None:
    """``python train.py ARGV`` / ``lightreasoner [train] ARGV``: the preflight, then Hydra runs
    :func:`train_job` over :func:`~lightreasoner.core.config.config_dir`. Returns the preflight's
    exit code when it stops the command (2: bad input; 0: a multirun previewed), else None once
    Hydra is done."""
    if (code := preflight(argv)) is not None:
        return code
    import hydra

    sys.argv[1:] = argv  # Hydra (and the sweep sub-directory resolver) read the command line from sys.argv
    hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(train_job)()
    return None


def main(argv: list[str] | None = None) -> int | None:
    """``lightreasoner [COMMAND] ARGS``: ``train`` unless the first argument names another command.
    Returns the exit code (None: 0)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    command = argv[0] if argv and argv[0] in COMMANDS else None
    if command is None:
        if argv and re.fullmatch(r"[A-Za-z_][\w.-]*", argv[0]):  # a bare word: neither an override nor a flag
            print(f"error: {argv[0]}: no such command (one of {', '.join(COMMANDS)}) and not an override (key=value)", file=sys.stderr)
            return 2
        return train(argv)
    module, _ = COMMANDS[command]
    if module is None:
        return train(argv[1:])
    return importlib.import_module(module).main(argv[1:])
