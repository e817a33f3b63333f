"""lightreasoner entry point: ``python train.py [stage=sample|distill|evaluate|all] [overrides]``.

    python train.py                                  # the offline demo, end to end
    python train.py experiment=coder_cpu             # the real offline Qwen2.5-Coder pair, CPU-sized
    python train.py -m sampling.beta=0.2,0.4,0.6     # a grid: traces are generated once (cache)
    python train.py -m sampling.beta=0.2,0.4 --jobs  # list a multirun's jobs (each checked), run nothing

Every job is composed and checked before anything heavy is imported and before Hydra makes a
run directory (:mod:`lightreasoner.run.cli`): a bad input is one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import lightreasoner.core.config  # noqa: F401  (importing it registers the config resolvers)

if __name__ == "__main__":
    from lightreasoner.run.cli import preflight

    if (code := preflight(sys.argv[1:])) is not None:
        sys.exit(code)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Run the stages; returns the objective (tuned accuracy) for hyper-parameter sweepers."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lightreasoner.run.pipeline import run  # torch and Lightning: imported once the job is checked

    try:
        return run(cfg).objective
    except (ValueError, OSError, ImportError) as err:  # bad input, a missing file, a full disk or read-only dir
        print(f"error: {err}", file=sys.stderr)  # once; summary.json and the job's log record it too
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records this job as failed, runs the others, then reports it
        sys.exit(2)


if __name__ == "__main__":
    main()
