"""A pair diagnostic (issue 31 §1): does the contrast point at the reference token where it
disagrees with the expert? Minutes, no fine-tune.

    python -m lightreasoner.run.diagnose                                   # the demo pair (default experiment)
    python -m lightreasoner.run.diagnose diagnose.problems=50 diagnose.answer_level=false experiment=coder_cpu
    python -m lightreasoner.run.diagnose -m model_pair=demo,demo_early_exit ...   # one job per pair, in turn

The config is composed by the same groups as ``train.py`` (:class:`lightreasoner.run.cli.Composer`,
:func:`lightreasoner.run.validation.validate`, the demo's prepare step), so ``model_pair=``,
``selection.*`` and ``-m`` sweeps read as they do for a run. The diagnostic's own keys are
``diagnose.<field>=<value>`` on the same command line (:class:`DiagnoseSettings`; they are read
here, not by Hydra, so that no config group is added to ``train.yaml``).

What it does: N reference solutions of the training split (:func:`reference_text`: GSM8K's gold
solution with the ``<<...>>`` calculator annotations removed, ending in ``\\boxed{ANSWER}``; the
demo's ``solution``; another dataset's ``solution`` field) are teacher-forced through both models
in the sampler's prompt, by the sampler's own scoring code path
(:meth:`~lightreasoner.sampling.sampler.ContrastiveSampler.score_batch` with :class:`ForcedEngine` in
place of generation). The result is one scored trace per reference, so everything downstream is
the run's code: at every position ``KL(pE||pA)``, the plausible set at ``selection.alpha``, the
expert's pick (argmax pE over the stored candidates, i.e. over the shared ids) and the contrast's
pick (argmax of ``selection.target``'s label, ``gamma``/``tau``/``top_k`` as configured); the kept
positions are :func:`lightreasoner.selection.select.select`'s (any registered rule).

Reported over all scored positions and over the kept ones (:func:`position_stats`): kept
fraction, KL quantiles, how often each pick is the reference token, and at **flips** (the picks
differ) the **contrast advantage** = (contrast right - expert right) / flips, with two 95%
intervals (:func:`advantage`): Wilson on the signed outcome among the decisive flips (those where
one of the two picks is right; positions treated as independent), scaled by the decisive share,
and a bootstrap over references (positions of one reference resampled together). The same split
by the reference token's class (:func:`lightreasoner.selection.select.token_class`). Beside them: the
on-policy flip rate of this config's trace cache when one exists (``label_argmax_differs`` of
:func:`~lightreasoner.selection.select.kept_step_profile`) and, with ``answer_level``, greedy accuracy of
the expert against contrastive decoding at the same alpha on the same N problems, paired
(:func:`lightreasoner.eval.stats.paired_stats`).

Written per pair: ``diagnose.json`` (the report) and ``diagnose.md`` in the output directory;
with ``logger=wandb`` one W&B run (job_type ``diagnose``) whose summary holds the flat
``diagnose/...`` keys of :func:`diagnose_metrics` (:func:`log_report`; ``logger=csv``: the same
keys as one row of ``logs/version_*/metrics.csv``). ``python -m lightreasoner.analysis.report`` finds the
``diagnose.json`` files under its paths and adds their "Pair diagnostic" table to the report.

Reference tokens are one valid continuation among several: the advantage is a proxy, not a
verdict on what fine-tuning will gain.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("lightreasoner.run.diagnose")

KL_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
ANNOTATION = re.compile(r"<<[^<>]*>>")
"""GSM8K's calculator annotations (``<<48/2=24>>``)."""


@dataclass
class DiagnoseSettings:
    """The diagnostic's own keys (``diagnose.<field>=<value>`` on the command line)."""

    problems: int = 100
    """N: the first N problems of the training split (``dataset.split``, the dataset's shuffle)."""
    batch_size: int = 8
    """References per teacher-forced batch (both models)."""
    answer_level: bool = True
    """Also decode the same N problems greedily with the expert and with contrastive decoding
    (at ``selection.alpha``) and compare their accuracy, paired. Costs two generations per problem."""
    out: str | None = None
    """Output directory (null: ``outputs/diagnose/<run_name or pair name>``). With ``-m``, the
    parent of one directory per job (``<pair>/``, and ``<pair>/<swept overrides>/`` where several
    jobs share a pair)."""

    def validate(self) -> None:
        for name in ("problems", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"diagnose.{name}: expected an integer >= 1, got {v!r}")
        if not isinstance(self.answer_level, bool):
            raise ValueError(f"diagnose.answer_level: expected true or false, got {self.answer_level!r}")
        if self.out is not None and not isinstance(self.out, str):
            raise ValueError(f"diagnose.out: expected a directory or null, got {self.out!r}")


def split_diagnose_args(argv: Sequence[str]) -> tuple[list[str], DiagnoseSettings]:
    """``(the other arguments, DiagnoseSettings)``: ``diagnose.<field>=<value>`` read here (YAML
    values, as Hydra reads them), one line naming a field that does not exist."""
    import yaml

    rest, values = [], {}
    known = {f.name for f in dataclasses.fields(DiagnoseSettings)}
    for arg in argv:
        if arg.startswith("diagnose.") and "=" in arg:
            key, _, raw = arg.partition("=")
            field = key[len("diagnose."):]
            if field not in known:
                raise ValueError(f"{key}: no such key; expected one of {sorted('diagnose.' + k for k in known)}")
            values[field] = yaml.safe_load(raw) if raw != "" else None
        else:
            rest.append(arg)
    settings = DiagnoseSettings(**values)
    settings.validate()
    return rest, settings


# ----------------------------------------------------------------------------- references
def reference_text(problem, row: Mapping, fmt: str) -> str:
    """The reference solution of one training row.

    ``gsm8k``: the gold solution (``answer``) up to ``####`` with the ``<<...>>`` annotations
    removed, then ``The answer is \\boxed{GOLD}`` (``problem.answer``: the number after ``####``,
    commas removed). Any other format: the row's ``solution`` text (the demo's ends in its boxed
    answer). A row without one is one ``ValueError``."""
    if fmt == "gsm8k":
        body = ANNOTATION.sub("", str(row["answer"]).rsplit("####", 1)[0]).rstrip()
        return f"{body}\nThe answer is \\boxed{{{problem.answer}}}"
    sol = row.get("solution")
    if not isinstance(sol, str) or not sol.strip():
        raise ValueError(
            f"diagnose: {problem.id} has no reference solution (a non-empty 'solution' field); the diagnostic "
            f"teacher-forces reference solutions: GSM8K, the demo, or a dataset whose rows hold 'solution'")
    return sol.strip()


def training_references(ds_cfg, n: int, seed: int) -> tuple[list, list[str]]:
    """The first ``n`` training problems (as the run reads them) and their reference texts."""
    from lightreasoner.data.benchmarks import _source, load_problems

    split = ds_cfg.split
    problems = load_problems(ds_cfg, split=split, max_problems=n, shuffle=ds_cfg.get("shuffle"), seed=seed)
    fmt = str(ds_cfg.get("format") or ds_cfg.get("name"))
    _, rows = _source(ds_cfg, split)
    by_index = [row for _, row in rows]  # problem ids are "{name}/{split}/{index in file order}"
    return problems, [reference_text(p, by_index[int(p.id.rsplit("/", 1)[1])], fmt) for p in problems]


# ----------------------------------------------------------------------------- teacher forcing
def _engine_base():
    from lightreasoner.generation.base import Engine

    return Engine


class ForcedEngine(_engine_base()):
    """An engine that "generates" the given references: the sampler then scores them with its
    teacher-forced passes (no logits from generation, so the expert runs one forward pass too).
    Set :attr:`pending` (one id list per prompt, each ending in an end-of-sequence id) before
    each :meth:`~lightreasoner.sampling.sampler.ContrastiveSampler.score_batch`."""

    name = "forced"

    def __init__(self, model, tokenizer, eos_token_ids=None) -> None:
        super().__init__(model, tokenizer, eos_token_ids)
        self.pending: list[list[int]] = []

    def generate_batch(self, prompt_ids, settings, return_logits: bool = False, seed=None):
        import torch

        from lightreasoner.generation.base import GeneratedBatch

        if len(self.pending) != len(prompt_ids):
            raise RuntimeError(f"ForcedEngine: {len(self.pending)} references for {len(prompt_ids)} prompts")
        width = max(len(r) for r in self.pending)
        pad = self.eos_token_ids[0]
        rows = [list(r) + [pad] * (width - len(r)) for r in self.pending]
        self.pending = []
        return GeneratedBatch(tokens=torch.tensor(rows, dtype=torch.long), logits=None)


def score_references(sampler, problems, references: Sequence[str], batch_size: int, system_prompt) -> list[dict]:
    """Scored traces of the references (the sampler's prompts and scoring; one record each)."""
    from lightreasoner.data.prompts import encode_prompts
    from lightreasoner.sampling.sampler import make_batch, question_sha

    tok = sampler.tokenizer
    eos = tok.eos_token_id if tok.eos_token_id is not None else sampler.engine.eos_token_ids[0]
    forced = sampler.engine
    questions = [p.question for p in problems]
    prompts = encode_prompts(tok, questions, system_prompt)
    amateur_prompts = encode_prompts(sampler._amateur_tokenizer, questions, system_prompt) if sampler._aligner is not None else None
    refs = [tok(r, add_special_tokens=False)["input_ids"] + [int(eos)] for r in references]
    records = []
    for a in range(0, len(problems), batch_size):
        b = min(a + batch_size, len(problems))
        forced.pending = refs[a:b]
        batch = make_batch([p.id for p in problems[a:b]], [question_sha(q) for q in questions[a:b]], prompts[a:b],
                           amateur_prompts[a:b] if amateur_prompts else None)
        records.extend(sampler.score_batch(batch))
        log.info("diagnose: scored %d of %d references", b, len(problems))
    return records


# ----------------------------------------------------------------------------- per position
@dataclass
class Positions:
    """Every scored reference position (parallel lists)."""

    problem: list[int]
    """Index of the reference."""
    step: list[int]
    kl: list[float]
    reference: list[int]
    """The reference token."""
    expert: list[int]
    """argmax pE over the stored candidates."""
    contrast: list[int]
    """argmax of the configured label over the plausible set."""
    kept: list[bool]
    token_class: list[str]
    unscored: int = 0
    """Positions with no plausible stored candidate (a cross-tokenizer pair's unaligned steps)."""


def reference_positions(records: Sequence[Mapping], sel, tokenizer, seed: int = 0) -> Positions:
    """Picks and selection at every position of scored references (``sel``: resolved
    :class:`~lightreasoner.selection.select.SelectionSettings`)."""
    from lightreasoner.selection.select import _label, answer_span_starts, select, token_class

    spans = answer_span_starts(records, tokenizer) if sel.rule == "answer_span" else None
    verified = {str(r["problem_id"]): True for r in records}  # a reference solution is right by construction
    samples = select(records, seed=seed, selector=sel, verified=verified, span_starts=spans)
    kept = {(s.problem_id, int(t)) for s in samples for t in s.steps.tolist()}
    out = Positions([], [], [], [], [], [], [], [])
    for i, rec in enumerate(records):
        off, ids, lpe = rec["cand_offsets"], rec["cand_ids"], rec["cand_logp_e"]
        pid = str(rec["problem_id"])
        for t in range(int(rec["kl"].numel())):
            a, b = int(off[t]), int(off[t + 1])
            label_ids, w = _label(rec, t, sel.alpha, sel.target, sel.tau, sel.top_k, getattr(sel, "gamma", 1.0)) if b > a else ([], [])
            if len(w) == 0:
                out.unscored += 1
                continue
            tok = int(rec["trace_ids"][t])
            out.problem.append(i)
            out.step.append(t)
            out.kl.append(float(rec["kl"][t]))
            out.reference.append(tok)
            out.expert.append(int(ids[a:b][int(lpe[a:b].argmax())]))
            out.contrast.append(int(label_ids[int(w.argmax())]))
            out.kept.append((pid, t) in kept)
            out.token_class.append(token_class(tokenizer.decode([tok])))
    return out


# ----------------------------------------------------------------------------- statistics
def advantage(contrast_right: int, expert_right: int, flips: int) -> dict:
    """The contrast advantage ``(c - e) / F`` at ``F`` flips with its 95% interval.

    The signed outcome of a flip is +1 (the contrast's pick is the reference), -1 (the expert's
    is) or 0 (neither). Among the ``D = c + e`` decisive flips the share ``c / D`` is binomial;
    its Wilson interval ``[lo, hi]`` maps to ``(D / F) * (2 lo - 1, 2 hi - 1)`` (conditional on
    ``D``; positions treated as independent). ``sign_test_p``: exact two-sided sign test of
    ``c`` against ``e`` (McNemar's)."""
    from lightreasoner.eval.stats import mcnemar_exact_p, wilson_interval

    c, e, f = int(contrast_right), int(expert_right), int(flips)
    if c + e > f:
        raise ValueError(f"advantage: {c} + {e} decisive flips exceed {f} flips")
    if f == 0:
        return {"flips": 0, "contrast_right": 0, "expert_right": 0, "advantage": None, "ci95": None, "sign_test_p": 1.0}
    d = c + e
    lo, hi = wilson_interval(c, d)
    scale = d / f
    ci = [scale * (2 * lo - 1), scale * (2 * hi - 1)] if d else [0.0, 0.0]
    return {"flips": f, "contrast_right": c, "expert_right": e, "advantage": (c - e) / f, "ci95": ci,
            "sign_test_p": mcnemar_exact_p(c, e)}


def bootstrap_advantage(per_reference: Sequence[tuple[int, int, int]], samples: int = BOOTSTRAP_SAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """95% percentile interval of ``sum(c - e) / sum(F)`` with references resampled (each
    reference's ``(c, e, F)`` together: positions of one solution are not independent)."""
    import numpy as np

    arr = np.asarray(per_reference, dtype=np.float64).reshape(-1, 3)
    if not len(arr) or arr[:, 2].sum() == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(arr), size=(samples, len(arr)))
    s = arr[idx].sum(axis=1)  # [samples, 3]
    ok = s[:, 2] > 0
    vals = (s[ok, 0] - s[ok, 1]) / s[ok, 2]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return [float(lo), float(hi)]


def _block(pos: Positions, idx: list[int], n_refs: int) -> dict:
    import numpy as np

    from lightreasoner.selection.select import TOKEN_CLASSES

    def counts(ii):
        flips = [i for i in ii if pos.expert[i] != pos.contrast[i]]
        c = sum(pos.contrast[i] == pos.reference[i] for i in flips)
        e = sum(pos.expert[i] == pos.reference[i] for i in flips)
        return flips, c, e

    flips, c, e = counts(idx)
    n = len(idx)
    kl = np.asarray([pos.kl[i] for i in idx], dtype=np.float64)
    kl = kl[np.isfinite(kl)]
    per_ref = np.zeros((n_refs, 3))
    for i in flips:
        per_ref[pos.problem[i]] += (pos.contrast[i] == pos.reference[i], pos.expert[i] == pos.reference[i], 1)
    adv = advantage(c, e, len(flips))
    adv["ci95_bootstrap_by_reference"] = bootstrap_advantage(per_ref.tolist())
    by_class = {}
    for cls in TOKEN_CLASSES:
        ii = [i for i in idx if pos.token_class[i] == cls]
        f_c, c_c, e_c = counts(ii)
        by_class[cls] = {"positions": len(ii), **advantage(c_c, e_c, len(f_c))}
    return {
        "positions": n,
        "kl_mean": float(kl.mean()) if kl.size else None,
        "kl_quantiles": {str(q): float(np.quantile(kl, q)) for q in KL_QUANTILES} if kl.size else {},
        "expert_is_reference": sum(pos.expert[i] == pos.reference[i] for i in idx) / n if n else None,
        "contrast_is_reference": sum(pos.contrast[i] == pos.reference[i] for i in idx) / n if n else None,
        "flip_rate": len(flips) / n if n else None,
        **adv,
        "by_class": by_class,
    }


def position_stats(pos: Positions, n_refs: int) -> dict:
    """The report over all scored positions and over the kept ones."""
    every = list(range(len(pos.reference)))
    kept = [i for i in every if pos.kept[i]]
    return {
        "scored_positions": len(every),
        "unscored_positions": pos.unscored,
        "kept_positions": len(kept),
        "kept_fraction": len(kept) / len(every) if every else 0.0,
        "all": _block(pos, every, n_refs),
        "kept": _block(pos, kept, n_refs),
    }


# ----------------------------------------------------------------------------- beside the references
def on_policy_flip_rate(cfg, tokenizer, sel, cross: bool) -> dict:
    """``label_argmax_differs`` of this config's trace cache (the run's training problems), when
    the cache exists; nothing is sampled."""
    from lightreasoner.core import alignment as align
    from lightreasoner.data.benchmarks import dataset_identity, load_problems
    from lightreasoner.core.config import to_plain
    from lightreasoner.generation import engine_key
    from lightreasoner.models.spec import pair_specs
    from lightreasoner.models.pairs import PairSettings
    from lightreasoner.data.records import SCORED_TRACE_KEYS
    from lightreasoner.sampling.sampler import SamplingSettings
    from lightreasoner.selection.select import answer_span_starts, kept_step_profile, select, verify_traces
    from lightreasoner.sampling.trace_cache import TraceCache, trace_key, trace_key_fields

    ds = cfg.dataset
    expert, amateur = pair_specs(cfg)
    settings = SamplingSettings.from_cfg(to_plain(cfg.sampling))
    fields = trace_key_fields(expert, amateur, dataset_identity(ds, ds.split), tokenizer, settings,
                              engine=engine_key(cfg.get("generation")), pair=PairSettings.from_cfg(cfg.model_pair).key_fields())
    key = trace_key(fields)
    path = Path(os.path.expanduser(str(cfg.paths.cache_dir))) / "traces" / key
    if not (path / "key.json").is_file():
        return {"found": False, "trace_key": key[:16]}
    cache = TraceCache(path, key, fields, record_keys=SCORED_TRACE_KEYS + (align.ALIGNMENT_KEYS if cross else ()))
    problems = load_problems(ds, split=ds.split, max_problems=ds.max_problems, shuffle=ds.shuffle, seed=cfg.seed)
    missing = set(cache.missing([p.id for p in problems]))
    problems = [p for p in problems if p.id not in missing]
    if not problems:
        return {"found": False, "trace_key": key[:16]}
    records = cache.read([p.id for p in problems])
    spans = answer_span_starts(records, tokenizer)
    verified = verify_traces(records, problems, tokenizer) if sel.verified_only else None
    samples = select(records, alpha_min=cache.alpha_min, seed=int(cfg.seed), selector=sel, verified=verified, span_starts=spans)
    profile = kept_step_profile(records, samples, tokenizer, span_starts=spans)
    return {"found": True, "trace_cache": str(path), "traces": len(records), "kept_steps": sum(s.num_steps for s in samples),
            "label_argmax_differs": profile.get("label_argmax_differs")}


def answer_level(cfg, sampler, problems, alpha: float, batch_size: int) -> dict:
    """Greedy expert vs contrastive decoding at ``alpha`` on ``problems``, both with the
    evaluation prompt and budget, scored as evaluation scores, paired."""
    import numpy as np

    from lightreasoner.eval.evaluate import EvalSettings, score_row
    from lightreasoner.eval.stats import paired_stats, wilson_interval
    from lightreasoner.generation import GenerationSettings, build_engine
    from lightreasoner.generation.contrastive import ContrastiveDecodingEngine
    from lightreasoner.data.prompts import encode_prompts

    ev = EvalSettings.from_cfg(cfg.eval)
    tok = sampler.tokenizer
    system = ev.system
    prompts = encode_prompts(tok, [p.question for p in problems], system or None, ev.prompt_template)
    budget = int(cfg.eval.get("max_new_tokens") or cfg.dataset.get("max_new_tokens") or 256)
    vocab = tok.get_vocab()
    stop = {int(vocab[t]) for t in ev.stop_tokens if t in vocab}
    settings = GenerationSettings(budget)
    out, verdicts = {}, {}
    for name, engine in (
        ("expert", build_engine(None, sampler.expert_model, tok)),
        ("contrastive_decoding", ContrastiveDecodingEngine(sampler.expert_model, tok, sampler.amateur_model, alpha=alpha)),
    ):
        engine.eos_token_ids = sorted(set(engine.eos_token_ids) | stop)
        t0 = time.perf_counter()
        gens = engine.generate(prompts, settings, batch_size=batch_size, desc=f"diagnose {name}")
        rows = [score_row(p, g, ev.verify_timeout_s, ev.published_numeric_tolerance) for p, g in zip(problems, gens)]
        k = sum(bool(r["correct"]) for r in rows)
        verdicts[name] = np.array([bool(r["correct"]) for r in rows])
        out[name] = {"correct": k, "accuracy": k / len(rows), "ci95": list(wilson_interval(k, len(rows))),
                     "wall_s": round(time.perf_counter() - t0, 1)}
    return {"n": len(problems), "max_new_tokens": budget, "alpha": alpha, **out,
            "paired": paired_stats(verdicts["expert"], verdicts["contrastive_decoding"])}


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    flags = ""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        pass
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "avx512_bf16": " avx512_bf16" in flags, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(), "torch": torch.__version__}


# ----------------------------------------------------------------------------- one job
def pair_label(cfg) -> str:
    """The pair's name, and a checkpoint amateur's directory name when the name does not say it."""
    name = str(cfg.model_pair.get("name") or "pair")
    amateur = cfg.model_pair.get("amateur") or {}
    if amateur.get("kind") == "checkpoint":
        tail = Path(str(amateur.get("name_or_path") or "")).name
        if tail and tail not in name:
            name = f"{name}__{tail}"
    return re.sub(r"[^\w.=-]+", "_", name)


def forced_sampler(cfg):
    """The contrastive sampler of the (prepared) pair ``cfg`` names, loaded, with its generation
    engine replaced by a :class:`ForcedEngine`: ``(sampler, sampling settings, selection
    settings, the replaced greedy engine)``. ``bench/diagnose.py`` times it against the bare
    forward passes."""
    from lightreasoner.core.config import to_plain
    from lightreasoner.models.pairs import PairSettings
    from lightreasoner.models.spec import pair_specs
    from lightreasoner.sampling.sampler import ContrastiveSampler, SamplingSettings
    from lightreasoner.selection.select import SelectionSettings

    sampling = SamplingSettings.from_cfg(to_plain(cfg.sampling))
    sel = SelectionSettings.from_cfg(cfg.get("selection"), alpha_min=sampling.alpha_min)
    expert, amateur = pair_specs(cfg)
    sampler = ContrastiveSampler(expert, amateur, sampling, pair=PairSettings.from_cfg(cfg.model_pair))
    sampler.configure_model()
    greedy = sampler.engine
    sampler.engine = ForcedEngine(sampler.expert_model, sampler.tokenizer, eos_token_ids=greedy.eos_token_ids)
    return sampler, sampling, sel, greedy


def run(cfg, settings: DiagnoseSettings) -> dict:
    """Diagnose the pair ``cfg`` names (a validated, composed run config); returns the report and
    writes ``diagnose.json`` and ``diagnose.md`` to the output directory."""
    import torch

    from lightreasoner.models.spec import pair_specs
    from lightreasoner.run.main import prepare
    from lightreasoner.run.validation import stage_threads

    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    threads = stage_threads(cfg, "sample")
    if threads:
        torch.set_num_threads(threads)
    label = pair_label(cfg)  # before prepare: the demo's amateur path is resolved there
    t0 = time.perf_counter()
    prepare(cfg)
    timing["prepare_s"] = time.perf_counter() - t0
    expert, amateur = pair_specs(cfg)

    t0 = time.perf_counter()
    problems, references = training_references(cfg.dataset, settings.problems, int(cfg.seed))
    sampler, sampling, sel, greedy = forced_sampler(cfg)
    timing["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    records = score_references(sampler, problems, references, settings.batch_size, sampling.system_prompt)
    timing["teacher_forcing_s"] = time.perf_counter() - t0
    tokens = sum(int(r["trace_ids"].numel()) for r in records)

    t0 = time.perf_counter()
    pos = reference_positions(records, sel, sampler.tokenizer, seed=int(cfg.seed))
    stats = position_stats(pos, len(records))
    cross = sampler._aligner is not None
    on_policy = on_policy_flip_rate(cfg, sampler.tokenizer, sel, cross)
    timing["statistics_s"] = time.perf_counter() - t0

    answers = None
    if settings.answer_level:
        if cross:
            answers = {"skipped": "contrastive decoding needs one shared tokenizer (this pair uses alignment=string)"}
        else:
            t0 = time.perf_counter()
            answers = answer_level(cfg, sampler, problems, sel.alpha, settings.batch_size)
            timing["answer_level_s"] = time.perf_counter() - t0
    timing["wall_s"] = time.perf_counter() - t_start

    report = {
        "pair": label,
        "expert": expert.display_name(),
        "amateur": amateur.display_name(),
        "dataset": str(cfg.dataset.name),
        "split": str(cfg.dataset.split),
        "references": len(records),
        "reference_tokens": tokens,
        "selection": dataclasses.asdict(sel),
        "dtype": {"expert": expert.dtype, "amateur": amateur.dtype},
        **stats,
        "on_policy": on_policy,
        "answer_level": answers,
        "timing": {k: round(v, 1) for k, v in timing.items()},
        "machine": machine(),
        "interval": "ci95: Wilson on the signed outcome among decisive flips, scaled by their share (positions independent); "
                    "ci95_bootstrap_by_reference: percentile bootstrap, references resampled",
    }
    out = Path(settings.out) if settings.out else Path("outputs") / "diagnose" / (cfg.get("run_name") or label)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnose.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "diagnose.md").write_text(markdown(report))
    log_report(cfg, report, out, settings)
    report["out_dir"] = str(out)
    return report


# ----------------------------------------------------------------------------- logger (W&B summary)
def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _interval(out: dict, key: str, ci) -> None:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(v) for v in ci):
        out[f"{key}_lo"], out[f"{key}_hi"] = float(ci[0]), float(ci[1])


SCOPE_METRICS = ("positions", "flips", "flip_rate", "contrast_right", "expert_right", "expert_is_reference",
                 "contrast_is_reference", "advantage", "sign_test_p", "kl_mean")
"""The fields of a scope block (:func:`_block`) logged as ``diagnose/<scope>/<field>``."""


def diagnose_metrics(report: Mapping) -> dict:
    """The report's figures as flat ``diagnose/...`` keys (a W&B run summary): numbers only, and
    a figure the report does not hold (no flips, no trace cache, no answer level) is left out.

    - ``diagnose/references``, ``reference_tokens``, ``scored_positions``, ``unscored_positions``,
      ``kept_positions``, ``kept_fraction``;
    - per scope (``all``: every scored position, ``kept``: the selected ones)
      ``diagnose/<scope>/`` + :data:`SCOPE_METRICS` (``flip_rate`` = flips / positions, the flip
      share), ``ci95_lo``/``ci95_hi`` (the advantage's Wilson interval),
      ``ci95_bootstrap_by_reference_lo``/``_hi`` (its bootstrap over references) and
      ``kl_p10``, ``kl_p25``, ``kl_p50``, ``kl_p75``, ``kl_p90``;
    - ``diagnose/on_policy/label_argmax_differs`` (the on-policy flip rate), ``.../traces``,
      ``.../kept_steps``, when the trace cache exists;
    - ``diagnose/answer_level/n``, ``expert_accuracy``, ``contrastive_decoding_accuracy``,
      ``diff`` (contrastive decoding - expert), ``diff_ci95_lo``/``_hi`` (paired bootstrap),
      ``mcnemar_p``, when the answer level ran;
    - ``diagnose/wall_s/total`` and ``diagnose/wall_s/<stage>`` (prepare, load,
      teacher_forcing, statistics, answer_level)."""
    if not isinstance(report, Mapping) or not isinstance(report.get("kept"), Mapping):
        raise TypeError("diagnose_metrics: expected a pair diagnostic report (diagnose.json: a mapping with 'kept' and 'all')")
    out: dict = {}
    for key in ("references", "reference_tokens", "scored_positions", "unscored_positions", "kept_positions", "kept_fraction"):
        if _number(report.get(key)):
            out[f"diagnose/{key}"] = report[key]
    for scope in ("all", "kept"):
        b = report.get(scope) or {}
        for key in SCOPE_METRICS:
            if _number(b.get(key)):
                out[f"diagnose/{scope}/{key}"] = b[key]
        _interval(out, f"diagnose/{scope}/ci95", b.get("ci95"))
        _interval(out, f"diagnose/{scope}/ci95_bootstrap_by_reference", b.get("ci95_bootstrap_by_reference"))
        for q, v in (b.get("kl_quantiles") or {}).items():
            if _number(v):
                out[f"diagnose/{scope}/kl_p{round(100 * float(q)):02d}"] = v
    op = report.get("on_policy") or {}
    if op.get("found"):
        for key in ("label_argmax_differs", "traces", "kept_steps"):
            if _number(op.get(key)):
                out[f"diagnose/on_policy/{key}"] = op[key]
    a = report.get("answer_level") or {}
    if "paired" in a:
        p = a["paired"]
        out["diagnose/answer_level/n"] = a["n"]
        for name in ("expert", "contrastive_decoding"):
            out[f"diagnose/answer_level/{name}_accuracy"] = a[name]["accuracy"]
        out["diagnose/answer_level/diff"] = p["diff"]
        _interval(out, "diagnose/answer_level/diff_ci95", p.get("ci95"))
        out["diagnose/answer_level/mcnemar_p"] = p["mcnemar_p"]
    for key, v in (report.get("timing") or {}).items():
        if _number(v):
            out["diagnose/wall_s/total" if key == "wall_s" else f"diagnose/wall_s/{key.removesuffix('_s')}"] = v
    return out


def log_report(cfg, report: Mapping, out_dir: str | Path, settings: DiagnoseSettings | None = None) -> dict | None:
    """Log the report into the configured ``logger`` (built by :func:`lightreasoner.training.loggers.build_logger`
    with its files under ``out_dir``).

    W&B: one run per pair, job_type ``diagnose``, group the pair's name (:func:`pair_label`) and
    name the output directory's unless ``logger.job_type`` / ``group`` / ``name`` are set; its
    config is the flat run config plus ``diagnose.*``, its summary :func:`diagnose_metrics`.
    CSV: the same metrics as one row of ``out_dir/logs/version_*/metrics.csv``. ``none``:
    nothing. Returns the metrics logged (None without a logger)."""
    import copy

    from omegaconf import open_dict, read_write

    from lightreasoner.training.loggers import build_logger, finish_logger, is_wandb

    if cfg.get("logger") is None or cfg.logger.get("_target_") is None:
        return None
    metrics = diagnose_metrics(report)
    cfg = copy.deepcopy(cfg)  # the caller's config keeps its output_dir and logger keys
    with read_write(cfg), open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        if "WandbLogger" in str(cfg.logger._target_):
            defaults = {"job_type": "diagnose", "group": str(report.get("pair") or pair_label(cfg)), "name": Path(out_dir).name}
            for key, value in defaults.items():
                if cfg.logger.get(key) is None:
                    cfg.logger[key] = value
    logger = build_logger(cfg)
    try:
        if is_wandb(logger):
            if settings is not None:
                logger.log_hyperparams({f"diagnose.{k}": v for k, v in dataclasses.asdict(settings).items()})
            logger.experiment.summary.update(metrics)
            log.info("diagnose: W&B run %s (summary: %d diagnose/ keys)", logger.experiment.dir, len(metrics))
        else:
            logger.log_metrics(metrics, step=0)
    except BaseException:
        finish_logger(logger, None, failed=True)
        raise
    finish_logger(logger, None)
    return metrics


# ----------------------------------------------------------------------------- tables
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _adv(b: Mapping) -> str:
    if b.get("advantage") is None:
        return "-"
    lo, hi = b["ci95"]
    return f"{100 * b['advantage']:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _boot(b: Mapping) -> str:
    ci = b.get("ci95_bootstrap_by_reference")
    return "-" if not ci else f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


SCOPE_HEADER = ("scope", "positions", "KL p50 / p90", "expert = ref", "contrast = ref", "flips", "contrast right",
                "expert right", "advantage [Wilson 95%]", "bootstrap by ref")


def table_rows(report: Mapping) -> tuple[list[tuple], list[tuple]]:
    """The scope rows (all, kept) and the per-class rows (kept and all)."""
    scope = []
    for name in ("all", "kept"):
        b = report[name]
        q = b.get("kl_quantiles") or {}
        kl = f"{q['0.5']:.3f} / {q['0.9']:.3f}" if q else "-"
        scope.append((name, str(b["positions"]), kl, _pct(b["expert_is_reference"]), _pct(b["contrast_is_reference"]),
                      str(b["flips"]), str(b["contrast_right"]), str(b["expert_right"]), _adv(b), _boot(b)))
    classes = []
    for name in ("kept", "all"):
        for cls, c in report[name]["by_class"].items():
            classes.append((name, cls, str(c["positions"]), str(c["flips"]), str(c["contrast_right"]), str(c["expert_right"]), _adv(c)))
    return scope, classes


CLASS_HEADER = ("scope", "class", "positions", "flips", "contrast right", "expert right", "advantage [Wilson 95%]")


def summary_lines(report: Mapping) -> list[str]:
    sel = report["selection"]
    m, t = report["machine"], report["timing"]
    lines = [
        f"pair {report['pair']} ({report['expert']} / {report['amateur']}), {report['references']} {report['dataset']} "
        f"{report['split']} references, {report['reference_tokens']} tokens; selection rule={sel['rule']} beta={sel['beta']} "
        f"alpha={sel['alpha']} target={sel['target']} tau={sel['tau']} gamma={sel.get('gamma', 1.0)}",
        f"kept fraction {_pct(report['kept_fraction'])} ({report['kept_positions']} of {report['scored_positions']} scored positions"
        + (f"; {report['unscored_positions']} unscored" if report["unscored_positions"] else "") + ")",
    ]
    op = report.get("on_policy") or {}
    if op.get("found"):
        lines.append(f"on-policy flip rate (trace cache, {op['traces']} traces, {op['kept_steps']} kept steps): "
                     f"label_argmax_differs = {_pct(op['label_argmax_differs'])}")
    else:
        lines.append("on-policy flip rate: no trace cache for this config")
    a = report.get("answer_level")
    if a and "skipped" in a:
        lines.append(f"answer level: skipped ({a['skipped']})")
    elif a:
        p = a["paired"]
        lines.append(f"answer level ({a['n']} problems, greedy, {a['max_new_tokens']} tokens): expert {_pct(a['expert']['accuracy'])}, "
                     f"contrastive decoding (alpha={a['alpha']}) {_pct(a['contrastive_decoding']['accuracy'])}; "
                     f"difference {100 * p['diff']:+.1f} pp [{100 * p['ci95'][0]:+.1f}, {100 * p['ci95'][1]:+.1f}] "
                     f"(paired bootstrap; only expert {p['only_baseline_correct']}, only contrastive {p['only_model_correct']}, "
                     f"McNemar p {p['mcnemar_p']:.3g})")
    lines.append(f"wall {t['wall_s']} s (teacher forcing {t['teacher_forcing_s']} s"
                 + (f", answer level {t['answer_level_s']} s" if "answer_level_s" in t else "") + f"); {m['cpu']}, "
                 f"{m['cores']} cores, {m['torch_threads']} torch threads; dtype {report['dtype']['expert']}/{report['dtype']['amateur']}")
    return lines


def markdown(report: Mapping) -> str:
    scope, classes = table_rows(report)

    def md(header, rows):
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows])

    return (f"## Pair diagnostic: {report['pair']}\n\n" + "\n".join(f"- {ln}" for ln in summary_lines(report)) + "\n\n"
            + md(SCOPE_HEADER, scope) + "\n\nBy the reference token's class:\n\n" + md(CLASS_HEADER, classes) + "\n")


def print_report(report: Mapping) -> None:
    from rich.console import Console

    from lightreasoner.eval.tables import rich_table

    console = Console(width=None if sys.stdout.isatty() else 200)
    scope, classes = table_rows(report)
    for title, header, rows in ((f"pair diagnostic: {report['pair']}", SCOPE_HEADER, scope), ("by the reference token's class", CLASS_HEADER, classes)):
        console.print(rich_table(title, header, rows))
    for line in summary_lines(report):
        console.print(line, highlight=False)
    console.print(f"written: {report['out_dir']}/diagnose.json, diagnose.md", highlight=False)


# ----------------------------------------------------------------------------- command line
def job_settings_of(jobs: Sequence[Sequence[str]], cfgs: Sequence, settings: DiagnoseSettings) -> list[DiagnoseSettings]:
    """One output directory per job. A single job keeps ``diagnose.out`` (or the default); the
    jobs of a sweep go under ``diagnose.out`` (default ``outputs/diagnose``) in a directory named
    for the job's pair (or run_name), and where several jobs share one, a sub-directory named for
    the overrides that differ between them (``selection.gamma=2.0``), so no job overwrites another."""
    if len(cfgs) <= 1:
        return [settings] * len(cfgs)
    base = Path(settings.out) if settings.out else Path("outputs") / "diagnose"
    labels = [str(cfg.get("run_name") or pair_label(cfg)) for cfg in cfgs]
    swept = [o for o in dict.fromkeys(o for job in jobs for o in job) if sum(o in job for job in jobs) < len(jobs)]
    out = []
    for job, label in zip(jobs, labels):
        where = base / label
        if labels.count(label) > 1:
            where = where / (re.sub(r"[^\w.=,-]+", "_", ",".join(o for o in job if o in swept)) or "job")
        out.append(dataclasses.replace(settings, out=str(where)))
    if len({s.out for s in out}) < len(out):
        raise ValueError("diagnose: two jobs of this sweep would write one directory; give each a run_name")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lightreasoner.run.diagnose [-m] [hydra overrides] [diagnose.<field>=<value>]``.
    Returns the exit code (2: bad input, one ``error:`` line)."""
    from lightreasoner.run.cli import Composer, PreflightError, split_argv, sweep_jobs
    from lightreasoner.core.config import unknown_group_option

    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        rest, settings = split_diagnose_args(argv)
        overrides, flags = split_argv(rest)
        unknown_flags = sorted(f for f in flags if f != "multirun")
        if unknown_flags:
            raise PreflightError(f"{unknown_flags[0]}: not a flag of the diagnostic (use -m for one job per swept value)")
        bad = unknown_group_option(overrides)
        if bad:
            raise PreflightError(bad)
        composer = Composer()
        try:
            jobs = sweep_jobs(composer, overrides)[0] if flags.get("multirun") else [overrides]
            from lightreasoner.run.validation import validate

            cfgs = []
            for i, job in enumerate(jobs):
                cfg = composer.compose(job)
                try:
                    validate(cfg)
                except (ValueError, OSError, ImportError) as err:
                    where = f"job {i} ({' '.join(job)}): " if len(jobs) > 1 else ""
                    raise PreflightError(f"{where}{err}") from None
                cfgs.append(cfg)
        finally:
            composer.close()
        for cfg, job_settings in zip(cfgs, job_settings_of(jobs, cfgs, settings)):
            print_report(run(cfg, job_settings))
    except (ValueError, OSError, ImportError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
