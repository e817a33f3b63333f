"""lightreasoner entry point: ``python train.py [stage=sample|distill|evaluate|all] [overrides]``.

    python train.py                                  # the offline demo, end to end
    python train.py experiment=coder_cpu             # the real offline Qwen2.5-Coder pair, CPU-sized
    python train.py -m sampling.beta=0.2,0.4,0.6     # a grid: traces are generated once (cache)
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lightreasoner.config import unknown_group_option  # (importing it registers the config resolvers)

if __name__ == "__main__" and (bad := unknown_group_option(sys.argv[1:])):
    print(f"error: {bad}", file=sys.stderr)  # before the slow imports below
    sys.exit(2)

from lightreasoner.pipeline import run  # noqa: E402

log = logging.getLogger("lightreasoner")


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Run the stages; returns the objective (tuned accuracy) for hyper-parameter sweepers."""
    try:
        return run(cfg).objective
    except (ValueError, OSError, ImportError) as err:  # bad input, a missing file, a full disk or read-only dir
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records this job as failed, runs the others, then reports it
        sys.exit(2)


if __name__ == "__main__":
    main()
