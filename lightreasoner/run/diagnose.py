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

Reported over all scored positions and over the kept ones (:func:`lightreasoner.eval.diagnostics.position_stats`): kept
fraction, KL quantiles, how often each pick is the reference token, and at **flips** (the picks
differ) the **contrast advantage** = (contrast right - expert right) / flips, with two 95%
intervals (:func:`~lightreasoner.eval.diagnostics.advantage`): Wilson on the signed outcome among the decisive flips (those where
one of the two picks is right; positions treated as independent), scaled by the decisive share,
and a bootstrap over references (positions of one reference resampled together). The same split
by the reference token's class (:func:`lightreasoner.selection.select.token_class`). Beside them: the
on-policy flip rate of this config's trace cache when one exists (``label_argmax_differs`` of
:func:`~lightreasoner.selection.select.kept_step_profile`) and, with ``answer_level``, greedy accuracy of
the expert against contrastive decoding at the same alpha on the same N problems, paired
(:func:`lightreasoner.eval.stats.paired_stats`).

Written per pair: ``diagnose.json`` (the report) and ``diagnose.md`` in the output directory;
with ``logger=wandb`` one W&B run (job_type ``diagnose``) whose summary holds the flat
``diagnose/...`` keys of :func:`lightreasoner.eval.diagnose_report.diagnose_metrics` (:func:`log_report`; ``logger=csv``: the same
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

from lightreasoner.eval.diagnose_report import diagnose_metrics, markdown, print_report
from lightreasoner.eval.diagnostics import position_stats, reference_positions

log = logging.getLogger("lightreasoner.run.diagnose")

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


def reference_ids(sampler, references: Sequence[str]) -> list[list[int]]:
    """Each reference's token ids in the sampler's tokenizer, ending in the end-of-sequence id:
    what :class:`ForcedEngine` "generates" (``bench/diagnose.py`` times the same tokens)."""
    tok = sampler.tokenizer
    eos = tok.eos_token_id if tok.eos_token_id is not None else sampler.engine.eos_token_ids[0]
    return [tok(r, add_special_tokens=False)["input_ids"] + [int(eos)] for r in references]


def score_references(sampler, problems, references: Sequence[str], batch_size: int, system_prompt) -> list[dict]:
    """Scored traces of the references (the sampler's prompts and scoring; one record each)."""
    from lightreasoner.data.prompts import encode_prompts
    from lightreasoner.sampling.sampler import make_batch, question_sha

    tok = sampler.tokenizer
    forced = sampler.engine
    questions = [p.question for p in problems]
    prompts = encode_prompts(tok, questions, system_prompt)
    amateur_prompts = encode_prompts(sampler._amateur_tokenizer, questions, system_prompt) if sampler._aligner is not None else None
    refs = reference_ids(sampler, references)
    records = []
    for a in range(0, len(problems), batch_size):
        b = min(a + batch_size, len(problems))
        forced.pending = refs[a:b]
        batch = make_batch([p.id for p in problems[a:b]], [question_sha(q) for q in questions[a:b]], prompts[a:b],
                           amateur_prompts[a:b] if amateur_prompts else None)
        records.extend(sampler.score_batch(batch))
        log.info("diagnose: scored %d of %d references", b, len(problems))
    return records


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
