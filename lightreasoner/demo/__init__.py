"""The offline demo: a synthetic word-problem task and a tiny expert/amateur pair trained on it.

``prepare_demo(demo_cfg, cache_dir)`` builds (once, cached by config hash) and returns the
directories of the expert, the amateur and the task's data splits.
"""

from lightreasoner.demo.pair import DemoConfig, MemberConfig, prepare_demo
from lightreasoner.demo.task import TaskConfig, build_demo_tokenizer, generate_splits

__all__ = ["DemoConfig", "MemberConfig", "TaskConfig", "prepare_demo", "build_demo_tokenizer", "generate_splits"]
