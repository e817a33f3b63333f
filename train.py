"""lightreasoner entry point: ``python train.py [stage=sample|distill|evaluate|all] [overrides]``.

    python train.py                                  # the offline demo, end to end
    python train.py experiment=coder_cpu             # the real offline Qwen2.5-Coder pair, CPU-sized
    python train.py -m sampling.beta=0.2,0.4,0.6     # a grid: traces are generated once (cache)
    python train.py -m sampling.beta=0.2,0.4 --jobs  # list a multirun's jobs (each checked), run nothing

The ``train`` command of ``lightreasoner`` (:func:`lightreasoner.run.app.train`). Every job is
composed and checked before anything heavy is imported and before Hydra makes a run directory
(:mod:`lightreasoner.run.cli`): a bad input is one ``error:`` line and exit code 2.
"""

import sys

from lightreasoner.run.app import train

if __name__ == "__main__":
    sys.exit(train(sys.argv[1:]))
