"""The demo's tiny expert/amateur pair: built, trained from scratch, measured and cached.

:func:`prepare_demo` is the entry point (``train.py`` calls it when the composed config has
a ``demo`` key): it generates the synthetic task's splits, builds the task tokenizer, trains
an expert and a weaker amateur (small transformers Llama models) with
:class:`lightreasoner.training.next_token.TraceSFTModule` on the training solutions, measures both models'
greedy accuracy on validation problems with the evaluation prompt, and caches everything
under ``{cache_dir}/demo/{key}/`` where ``key`` hashes the demo config::

    {key}/expert/      save_pretrained model + tokenizer
    {key}/expert_step{N}/  the expert after N of its training steps (``demo.expert_checkpoints``)
    {key}/amateur/     save_pretrained model + tokenizer
    {key}/data/        train.jsonl, validation.jsonl, test.jsonl
    {key}/manifest.json  config, validation accuracies, train times, library versions

The directory is built under a temporary name and renamed into place at the end (under a
file lock), so an interrupted build leaves nothing half-written and only the first run pays.

The default config's pair ships with the package (:data:`SHIPPED_DIR`, ``lightreasoner/demo/shipped/``:
``expert/``, ``amateur/``, ``manifest.json`` and a ``SHA256SUMS`` record of every file of the
cached pair, the data splits included). When the cache has no pair for the key and the key is
the shipped one (and ``demo.use_shipped`` is true), :func:`install_shipped` checks the shipped
files' sha256, copies them into the cache the same atomic way and regenerates the data splits
(checked against the same record) instead of training: a cold run only samples, tunes and
evaluates. Any other config builds locally. ``python -m lightreasoner.demo.ship build|check``
rebuilds the shipped pair and compares a fresh build with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from lightreasoner.data import prompts
from lightreasoner.demo.task import (
    DemoProblem,
    TaskConfig,
    build_demo_tokenizer,
    generate_splits,
    heuristic_solutions,
    write_splits,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped whenever the task generator, tokenizer or training code changes its output."""

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
"""The default demo config's pair, shipped as package data (see :func:`install_shipped`)."""

SUMS_FILE = "SHA256SUMS"
"""``sha256sum``-format record of every file of the cached pair (in the shipped directory)."""

TRAIN_SYSTEMS = (prompts.SAMPLING_SYSTEM, prompts.EVAL_SYSTEM)
"""The pair is trained on every problem under both system messages (sampling and evaluation)."""


@dataclass
class MemberConfig:
    """Architecture and training of one model of the pair (``demo.expert`` / ``demo.amateur``)."""

    hidden_size: int = 96
    """Model width."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (key/value heads: half of them)."""
    intermediate_size: int = 256
    """MLP width."""
    seed: int = 0
    """Initialisation and data-order seed."""
    train_steps: int = 600
    """Optimizer steps (each on ``batch_size`` traces)."""
    batch_size: int = 32
    """Traces per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    schedule: str = "cosine"
    """constant | linear | cosine, after the warm-up (see ``TraceSFTModule``)."""
    min_lr_ratio: float = 0.1
    """Floor of the cosine schedule as a fraction of ``lr``."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (0: none)."""


@dataclass
class DemoConfig:
    """The whole demo build (``demo`` in the composed config; see conf/demo/default.yaml)."""

    task: TaskConfig = field(default_factory=TaskConfig)
    expert: MemberConfig = field(default_factory=MemberConfig)
    amateur: MemberConfig = field(default_factory=lambda: MemberConfig(hidden_size=64, num_layers=2, intermediate_size=128, seed=1, train_steps=200, batch_size=64))
    eval_problems: int = 500
    """Validation problems scored (greedy, evaluation prompt) for the manifest; 0 skips."""
    eval_batch_size: int = 250
    """Problems per generation batch when scoring."""
    max_new_tokens: int = 64
    """Generation limit when scoring (the longest solution is under 50 tokens)."""
    amateur_init: str = "scratch"
    """Where the amateur starts: ``scratch`` (random init, the demo) or ``expert`` (the trained
    expert's weights, then ``demo.amateur.train_steps`` more steps on the amateur's own training
    text: the positive control's amateur is the expert plus the heuristic, so the two disagree
    where the heuristic is and hardly anywhere else). ``expert`` needs the amateur's shape to be
    the expert's. Part of the cache key only when not ``scratch``."""
    expert_checkpoints: list[int] = field(default_factory=list)
    """Also keep the expert as it was after these training steps (``expert_step{N}/``, scored
    on validation like the pair): earlier checkpoints of the expert, for
    ``model_pair.amateur.kind=checkpoint``. Part of the cache key only when not empty."""
    num_threads: int | None = None
    """torch CPU threads while building (``None``: torch's default; not part of the cache key)."""
    progress: bool = True
    """Show progress bars while training (not part of the cache key)."""
    use_shipped: bool = True
    """When the key is the shipped pair's (the default config), install the pair shipped with
    the package instead of training it (not part of the cache key; false: always build)."""

    @classmethod
    def from_any(cls, cfg: Any) -> "DemoConfig":
        """From a ``DemoConfig``, a dict or an OmegaConf node; unknown fields are an error."""
        if isinstance(cfg, DemoConfig):
            return cfg
        if cfg is None:
            return cls()
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # omegaconf is a dependency; plain dicts work without it
            pass
        d = dict(cfg)
        sub = {"task": TaskConfig, "expert": MemberConfig, "amateur": MemberConfig}
        out: dict[str, Any] = {}
        for k, v in d.items():
            if k in sub:
                out[k] = _dataclass_from(sub[k], v or {}, f"demo.{k}")
            elif k in {f.name for f in fields(cls)}:
                out[k] = v
            else:
                raise ValueError(f"demo: unknown field {k!r}; expected some of {sorted(f.name for f in fields(cls))}")
        if "amateur" not in out:
            out["amateur"] = cls().amateur
        cfg = cls(**out)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for where, obj in (("demo", self), ("demo.task", self.task), ("demo.expert", self.expert), ("demo.amateur", self.amateur)):
            _check_types(obj, where)
        if self.num_threads is not None and (isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int)):
            raise ValueError(f"demo.num_threads: expected null or an integer >= 1, got {self.num_threads!r}")
        t = self.task
        if not (1 <= t.min_steps <= t.max_steps):
            raise ValueError(f"demo.task: need 1 <= min_steps <= max_steps, got {t.min_steps}, {t.max_steps}")
        if t.train_size < 1 or t.validation_size < 0 or t.test_size < 0:
            raise ValueError("demo.task: train_size must be >= 1, validation_size and test_size >= 0")
        if t.max_value < 10 or t.max_operand < 2 or t.max_factor < 2:
            raise ValueError("demo.task: need max_value >= 10, max_operand >= 2, max_factor >= 2")
        for k in ("shared_error_rate", "amateur_error_rate"):
            if not 0.0 <= getattr(t, k) <= 1.0:
                raise ValueError(f"demo.task.{k}: expected a share in [0, 1], got {getattr(t, k)!r}")
        from lightreasoner.demo.task import HEURISTICS

        if t.heuristic not in HEURISTICS:
            raise ValueError(f"demo.task.heuristic: expected one of {sorted(HEURISTICS)}, got {t.heuristic!r}")
        for name in ("expert", "amateur"):
            m = getattr(self, name)
            if m.hidden_size % m.num_heads or (m.hidden_size // m.num_heads) % 2:
                raise ValueError(f"demo.{name}: hidden_size must split into num_heads heads of even size")
            if m.train_steps < 1 or m.batch_size < 1 or m.lr <= 0:
                raise ValueError(f"demo.{name}: train_steps, batch_size and lr must be positive")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"demo.num_threads: expected null or >= 1, got {self.num_threads}")
        if self.amateur_init not in ("scratch", "expert"):
            raise ValueError(f"demo.amateur_init: expected scratch or expert, got {self.amateur_init!r}")
        shape = ("hidden_size", "num_layers", "num_heads", "intermediate_size")
        if self.amateur_init == "expert" and any(getattr(self.amateur, k) != getattr(self.expert, k) for k in shape):
            raise ValueError(f"demo.amateur_init=expert: the amateur's {', '.join(shape)} must be the expert's")
        if self.max_new_tokens < 1 or self.eval_batch_size < 1:
            raise ValueError("demo: max_new_tokens and eval_batch_size must be >= 1")
        steps = self.expert_checkpoints
        if not isinstance(steps, (list, tuple)) or len(set(steps)) != len(steps) or any(
            isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < self.expert.train_steps for n in steps
        ):
            raise ValueError(
                f"demo.expert_checkpoints: expected distinct training steps in [1, {self.expert.train_steps - 1}] "
                f"(demo.expert.train_steps - 1), got {steps!r}"
            )

    def key_dict(self) -> dict:
        """Everything that determines the built pair (what the cache key hashes)."""
        d = asdict(self)
        d.pop("progress")
        d.pop("num_threads")
        d.pop("use_shipped")
        if not d["expert_checkpoints"]:  # the demo without checkpoints keeps the key it always had
            d.pop("expert_checkpoints")
        else:
            d["expert_checkpoints"] = sorted(d["expert_checkpoints"])
        if d["amateur_init"] == "scratch":  # the demo keeps the key it always had
            d.pop("amateur_init")
        if not self.heuristic_on:  # the positive control off: the demo keeps the key it always had
            d["task"].pop("shared_error_rate")
            d["task"].pop("amateur_error_rate")
            d["task"].pop("heuristic")
        d["format_version"] = FORMAT_VERSION
        return d

    @property
    def heuristic_on(self) -> bool:
        """The positive control's heuristic is in some member's training text (issue 31 §3)."""
        return bool(self.task.shared_error_rate or self.task.amateur_error_rate)

    def key(self) -> str:
        blob = json.dumps(self.key_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _dataclass_from(cls, d: Any, what: str):
    d = dict(d)
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {sorted(unknown)}; expected some of {sorted(known)}")
    return cls(**d)


# --------------------------------------------------------------------------------------------
# Scoring (greedy generation with the evaluation prompt)

def greedy_generate(
    model,
    tokenizer,
    questions: list[str],
    system: str | None = prompts.EVAL_SYSTEM,
    batch_size: int = 250,
    max_new_tokens: int = 64,
) -> list[str]:
    """Greedy completions (decoded, special tokens dropped) of each question's chat prompt,
    through the shared generation interface (the transformers engine)."""
    from lightreasoner.generation import GenerationSettings, HFEngine

    model.eval()
    engine = HFEngine(model, tokenizer)
    prompt_ids = prompts.encode_prompts(tokenizer, questions, system)
    gens = engine.generate(prompt_ids, GenerationSettings(max_new_tokens), batch_size, progress=False)
    return [g.text for g in gens]


def score(model, tokenizer, problems: list[DemoProblem] | list[dict], system: str | None = prompts.EVAL_SYSTEM,
          batch_size: int = 250, max_new_tokens: int = 64) -> dict:
    """Greedy accuracy of ``model`` on ``problems`` (and how many outputs hold a ``\\boxed{}``).

    Answers are extracted and compared exactly as the evaluation stage does
    (:func:`lightreasoner.data.answers.extract_answer` / ``is_equivalent``, numeric).
    """
    from lightreasoner.data.answers import extract_answer, is_equivalent

    rows = [p.to_row() if isinstance(p, DemoProblem) else p for p in problems]
    if not rows:
        return {"n": 0, "accuracy": None, "boxed_fraction": None}
    texts = greedy_generate(model, tokenizer, [r["question"] for r in rows], system, batch_size, max_new_tokens)
    correct = [is_equivalent(extract_answer(t, "numeric"), r["answer"], "numeric") for t, r in zip(texts, rows)]
    return {
        "n": len(rows),
        "accuracy": sum(correct) / len(rows),
        "boxed_fraction": sum("\\boxed{" in t for t in texts) / len(rows),
        "examples": [{"question": r["question"], "output": t, "answer": r["answer"]} for r, t in zip(rows[:3], texts)],
    }


# --------------------------------------------------------------------------------------------
# Training one member


def build_member(tokenizer, m: MemberConfig, max_positions: int = 512):
    """A randomly initialised Llama model of the member's size for ``tokenizer``."""
    from lightreasoner.models.tiny import build_tiny_model

    return build_tiny_model(
        tokenizer,
        seed=m.seed,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        intermediate_size=m.intermediate_size,
        max_positions=max_positions,
    )


def train_member(model, tokenizer, examples: list[dict], m: MemberConfig, name: str = "model",
                 progress: bool = True, work_dir: str | Path | None = None,
                 snapshots: dict[int, dict] | None = None) -> dict:
    """Train ``model`` in place with :class:`TraceSFTModule` for ``m.train_steps`` steps (CPU).

    ``examples``: encoded traces (:func:`lightreasoner.training.next_token.encode_traces`). Returns
    ``{"seconds", "steps", "final_loss", "params"}``. ``snapshots``: a mapping whose keys are
    training steps; each gets a copy of the model's state dict as it was after that step.
    """
    import lightning as L
    from torch.utils.data import DataLoader, RandomSampler

    from lightreasoner.training.next_token import TraceSFTModule, collate_traces

    module = TraceSFTModule(
        model, lr=m.lr, weight_decay=m.weight_decay, warmup_steps=m.warmup_steps, max_steps=m.train_steps,
        schedule=m.schedule, min_lr_ratio=m.min_lr_ratio,
    )
    gen = torch.Generator().manual_seed(m.seed)
    pad = int(tokenizer.pad_token_id)
    loader = DataLoader(
        examples,
        batch_size=m.batch_size,
        sampler=RandomSampler(examples, generator=gen),
        collate_fn=lambda b: collate_traces(b, pad),
        drop_last=len(examples) > m.batch_size,
    )
    losses: list[float] = []

    class _Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))
            if snapshots is not None and trainer.global_step in snapshots and not snapshots[trainer.global_step]:
                snapshots[trainer.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    work = Path(work_dir or tempfile.mkdtemp(prefix="lr-demo-train-"))
    with _QuietLightning(), warnings.catch_warnings():
        for message in (".*does not have many workers.*", ".*no `val_dataloader`.*", ".*LeafSpec.*"):
            warnings.filterwarnings("ignore", message=message)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=m.train_steps,
            max_epochs=-1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            num_sanity_val_steps=0,
            gradient_clip_val=m.grad_clip or None,
            default_root_dir=str(work),
            callbacks=[_Record()],
        )
        if progress:
            print(f"demo: training the {name} ({n_params(model) / 1e6:.2f}M parameters, {m.train_steps} steps)", flush=True)
        torch.manual_seed(m.seed)
        model.train()
        t0 = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - t0
    model.eval()
    tail = losses[-20:]
    return {
        "seconds": round(seconds, 2),
        "steps": trainer.global_step,
        "final_loss": round(sum(tail) / max(1, len(tail)), 4),
        "params": n_params(model),
    }


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


class _QuietLightning:
    """Lightning's info lines (accelerator, tips) off while building; levels restored after."""

    NAMES = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.rank_zero")

    def __enter__(self):
        self.levels = {n: logging.getLogger(n).level for n in self.NAMES}
        for n in self.NAMES:
            logging.getLogger(n).setLevel(logging.WARNING)

    def __exit__(self, *exc):
        for n, level in self.levels.items():
            logging.getLogger(n).setLevel(level)


# --------------------------------------------------------------------------------------------
# Building and caching the pair


def build_pair(cfg: DemoConfig, out_dir: str | Path) -> dict:
    """Generate the task, train both models and write everything under ``out_dir``.

    Returns the manifest (also written to ``out_dir/manifest.json``).
    """

    out = Path(out_dir)
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _build_pair(cfg, out)
    finally:
        torch.set_num_threads(threads)


def _build_pair(cfg: DemoConfig, out: Path) -> dict:
    from lightreasoner.training.next_token import encode_traces
    from lightreasoner.models.tiny import save_pair_member

    t_start = time.perf_counter()
    splits = generate_splits(cfg.task)
    files = write_splits(splits, out / "data")
    tokenizer = build_demo_tokenizer()
    rows = [(p.question, p.solution) for p in splits["train"]]
    examples = encode_traces(tokenizer, rows, TRAIN_SYSTEMS)
    member_examples = {"expert": examples, "amateur": examples}
    heuristic: dict[str, dict] = {}
    if cfg.heuristic_on:  # the positive control: each member's own training text (the splits stay correct)
        for name, rate in (("expert", cfg.task.shared_error_rate), ("amateur", cfg.task.amateur_error_rate)):
            sols, heuristic[name] = heuristic_solutions(splits["train"], rate, cfg.task.seed, name, cfg.task.heuristic)
            if rate:
                rows_m = [(p.question, s) for p, s in zip(splits["train"], sols)]
                member_examples[name] = encode_traces(tokenizer, rows_m, TRAIN_SYSTEMS)
    max_len = max(len(e["input_ids"]) for ex in member_examples.values() for e in ex)
    max_positions = max(256, 2 * (max_len + cfg.max_new_tokens))
    val = splits["validation"][: cfg.eval_problems]
    members: dict[str, dict] = {}
    expert_state: dict | None = None  # the trained expert's weights (amateur_init=expert starts from them)
    for name in ("expert", "amateur"):
        m: MemberConfig = getattr(cfg, name)
        model = build_member(tokenizer, m, max_positions=max_positions)
        if name == "amateur" and cfg.amateur_init == "expert":  # the expert, trained on further
            model.load_state_dict(expert_state)
        snapshots: dict[int, dict] = {n: {} for n in cfg.expert_checkpoints} if name == "expert" else {}
        stats = train_member(model, tokenizer, member_examples[name], m, name=name, progress=cfg.progress, work_dir=out / "_work",
                             snapshots=snapshots)
        if snapshots:
            stats["checkpoints"] = _save_snapshots(cfg, tokenizer, m, max_positions, snapshots, val, out)
        t0 = time.perf_counter()
        val_stats = score(model, tokenizer, val, prompts.EVAL_SYSTEM, cfg.eval_batch_size, cfg.max_new_tokens)
        stats["validation_eval_seconds"] = round(time.perf_counter() - t0, 2)
        stats["validation"] = val_stats
        save_pair_member(model, tokenizer, out / name)
        if name == "expert":
            expert_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        members[name] = stats
        if cfg.progress and val_stats["accuracy"] is not None:
            print(
                f"demo: {name}: validation accuracy {val_stats['accuracy']:.1%} on {val_stats['n']} problems "
                f"(trained in {stats['seconds']:.0f}s, final loss {stats['final_loss']:.3f})",
                flush=True,
            )
    shutil.rmtree(out / "_work", ignore_errors=True)
    manifest = {
        "key": cfg.key(),
        "config": cfg.key_dict(),
        "files": {s: str(Path("data") / p.name) for s, p in files.items()},
        "split_sizes": {s: len(v) for s, v in splits.items()},
        "vocab_size": len(tokenizer),
        "max_trace_tokens": max_len,
        "members": members,
        **({"heuristic": heuristic} if heuristic else {}),
        "build_seconds": round(time.perf_counter() - t_start, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _save_snapshots(cfg: DemoConfig, tokenizer, m: MemberConfig, max_positions: int, snapshots: dict[int, dict],
                    val: list, out: Path) -> dict:
    """Save each expert snapshot as ``expert_step{N}/`` and score it on validation like the pair."""
    from lightreasoner.models.tiny import save_pair_member

    result = {}
    for step, state in sorted(snapshots.items()):
        if not state:
            raise RuntimeError(f"demo.expert_checkpoints: training never reached step {step}")
        model = build_member(tokenizer, m, max_positions=max_positions)
        model.load_state_dict(state)
        model.eval()
        val_stats = score(model, tokenizer, val, prompts.EVAL_SYSTEM, cfg.eval_batch_size, cfg.max_new_tokens)
        save_pair_member(model, tokenizer, out / f"expert_step{step}")
        result[str(step)] = {"validation": val_stats}
        if cfg.progress and val_stats["accuracy"] is not None:
            print(f"demo: expert after {step} steps: validation accuracy {val_stats['accuracy']:.1%}", flush=True)
    return result


def _versions() -> dict:
    import lightning
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "lightning": lightning.__version__,
            "python": platform.python_version()}


def _dirs(root: Path) -> dict:
    dirs = {
        "expert_dir": str(root / "expert"),
        "amateur_dir": str(root / "amateur"),
        "data_dir": str(root / "data"),
        "manifest": str(root / "manifest.json"),
    }
    snaps = sorted(p.name for p in root.glob("expert_step*") if p.is_dir())
    if snaps:  # earlier checkpoints of the expert (demo.expert_checkpoints), by directory name
        dirs["expert_checkpoints"] = {name: str(root / name) for name in snaps}
    return dirs


def demo_amateur_dir(amateur: Any, dirs: dict) -> str:
    """The directory ``model_pair.amateur`` points at in the demo: the trained amateur
    (``kind=model``), the expert itself (``kind=early_exit``: a layer of it), or for
    ``kind=checkpoint`` the expert's checkpoint that ``name_or_path`` names (``expert_step{N}``,
    one of ``demo.expert_checkpoints``; an existing directory is taken as it is)."""
    node = dict(amateur or {})
    kind = node.get("kind") or "model"
    if kind == "early_exit":
        return dirs["expert_dir"]
    if kind != "checkpoint":
        return dirs["amateur_dir"]
    name = str(node.get("name_or_path") or "")
    snaps = dirs.get("expert_checkpoints", {})
    if name in snaps:
        return snaps[name]
    if name and name != "???" and Path(os.path.expanduser(name)).is_dir():
        return name
    raise ValueError(
        f"model_pair.amateur.name_or_path: with the demo and kind=checkpoint, expected one of the demo expert's "
        f"checkpoints {sorted(snaps)} or a directory (demo.expert_checkpoints=[N] keeps expert_stepN), got {name!r}"
    )


def _check_types(obj: Any, where: str) -> None:
    """Each field of a demo settings dataclass has its default's kind (a number where a number
    is expected, never a bool or a string): one ``ValueError`` naming the key, not a
    ``TypeError`` from a comparison later."""
    from dataclasses import MISSING

    for f in fields(obj):
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        v = getattr(obj, f.name)
        if isinstance(default, dict):
            ok, kind = isinstance(v, dict), "a mapping"
        elif isinstance(default, bool):
            ok, kind = isinstance(v, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(v, int) and not isinstance(v, bool), "an integer"
        elif isinstance(default, float):
            ok, kind = isinstance(v, (int, float)) and not isinstance(v, bool), "a number"
        elif isinstance(default, str):
            ok, kind = isinstance(v, str), "a string"
        else:
            continue
        if not ok:
            raise ValueError(f"{where}.{f.name}: expected {kind}, got {v!r}")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_sums(root: str | Path) -> dict[str, str]:
    """Write ``root/SHA256SUMS`` (``sha256sum`` format, sorted paths) over every file under
    ``root`` except itself; returns ``{relative path: sha256}``."""
    root = Path(root)
    sums = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != SUMS_FILE}
    (root / SUMS_FILE).write_text("".join(f"{h}  {rel}\n" for rel, h in sorted(sums.items())))
    return sums


def read_sums(root: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` from ``root/SHA256SUMS``."""
    sums = {}
    for line in (Path(root) / SUMS_FILE).read_text().splitlines():
        if line.strip():
            digest, rel = line.split(None, 1)
            sums[rel.lstrip("*")] = digest
    return sums


def _check_sums(root: Path, sums: dict[str, str], where: str) -> None:
    for rel, want in sorted(sums.items()):
        path = root / rel
        if not path.is_file():
            raise ValueError(f"demo: {where} file {rel} is missing from {root} (listed in {SUMS_FILE}); "
                             f"reinstall lightreasoner or set demo.use_shipped=false")
        got = sha256_file(path)
        if got != want:
            raise ValueError(f"demo: {where} file {rel} in {root} has sha256 {got[:16]}..., {SUMS_FILE} says "
                             f"{want[:16]}...; reinstall lightreasoner or set demo.use_shipped=false")


def shipped_key(shipped_dir: str | Path | None = None) -> str | None:
    """The cache key of the pair shipped in ``shipped_dir`` (default :data:`SHIPPED_DIR`), or
    ``None`` when nothing usable is shipped there."""
    root = Path(shipped_dir or SHIPPED_DIR)
    if not (root / "manifest.json").is_file() or not (root / SUMS_FILE).is_file():
        return None
    try:
        return json.loads((root / "manifest.json").read_text()).get("key")
    except (OSError, ValueError):
        return None


def verify_shipped(shipped_dir: str | Path | None = None) -> dict[str, str]:
    """Check every shipped file (not the regenerated ``data/``) against ``SHA256SUMS``: one
    ``ValueError`` naming the first file that is missing or differs. Returns the record."""
    root = Path(shipped_dir or SHIPPED_DIR)
    sums = read_sums(root)
    _check_sums(root, {r: h for r, h in sums.items() if not r.startswith("data/")}, "shipped pair")
    return sums


def install_shipped(cfg: DemoConfig, dest: str | Path, shipped_dir: str | Path | None = None) -> dict:
    """Install the shipped pair for ``cfg`` into ``dest`` (a fresh directory): check the shipped
    files' sha256, copy them, regenerate the data splits from ``cfg.task`` and check those too.
    Returns the manifest."""
    root = Path(shipped_dir or SHIPPED_DIR)
    key = shipped_key(root)
    if key != cfg.key():
        raise ValueError(f"demo: the shipped pair in {root} has key {key}, the config's is {cfg.key()}")
    sums = verify_shipped(root)
    out = Path(dest)
    for rel in sorted(sums):
        if not rel.startswith("data/"):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, out / rel)
    write_splits(generate_splits(cfg.task), out / "data")
    _check_sums(out, {r: h for r, h in sums.items() if r.startswith("data/")}, "regenerated data")
    return json.loads((out / "manifest.json").read_text())


def demo_root(demo_cfg: Any, cache_dir: str | Path) -> Path:
    """Where the pair for ``demo_cfg`` lives (built or not)."""
    cfg = DemoConfig.from_any(demo_cfg)
    return Path(os.path.expanduser(str(cache_dir))) / "demo" / cfg.key()


def prepare_demo(demo_cfg: Any, cache_dir: str | Path) -> dict:
    """The demo pair and data for ``demo_cfg``, built on first use and cached.

    Returns ``{"expert_dir", "amateur_dir", "data_dir", "manifest"}`` (absolute paths under
    ``{cache_dir}/demo/{key}/``). Safe when several processes call it at once: one builds,
    the others wait on the lock and reuse the result. The default config's pair is installed
    from the package (:func:`install_shipped`) instead of being trained, unless
    ``demo.use_shipped`` is false.
    """
    from filelock import FileLock

    cfg = DemoConfig.from_any(demo_cfg)
    final = demo_root(cfg, cache_dir)
    if (final / "manifest.json").is_file():
        log.info("demo: reusing the cached pair in %s", final)
        return _dirs(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "manifest.json").is_file():
            return _dirs(final)
        if final.exists():  # not ours and not complete (no manifest): never trust it
            shutil.rmtree(final)
        shipped = SHIPPED_DIR if cfg.use_shipped and shipped_key(SHIPPED_DIR) == cfg.key() else None
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            t0 = time.perf_counter()
            if shipped is not None:
                manifest = install_shipped(cfg, tmp, shipped)
            else:
                if cfg.progress:
                    print(f"demo: building the tiny expert/amateur pair (first run only) in {final}", flush=True)
                manifest = build_pair(cfg, tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if shipped is not None:
        acc = {n: manifest["members"][n]["validation"].get("accuracy") for n in ("expert", "amateur")}
        accs = ", ".join(f"{n} {a:.1%}" if a is not None else f"{n} not scored" for n, a in acc.items())
        print(f"demo: used the shipped pair (key {cfg.key()}; validation accuracy {accs}), installed in "
              f"{time.perf_counter() - t0:.1f}s into {final}", flush=True)
    elif cfg.progress:
        print(f"demo: pair built in {manifest['build_seconds']:.0f}s", flush=True)
    return _dirs(final)


def load_manifest(dirs_or_root: dict | str | Path) -> dict:
    """The manifest of a built demo (from :func:`prepare_demo`'s result or its directory)."""
    path = Path(dirs_or_root["manifest"]) if isinstance(dirs_or_root, dict) else Path(dirs_or_root) / "manifest.json"
    return json.loads(path.read_text())
