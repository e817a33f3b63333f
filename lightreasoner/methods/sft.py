"""The paper's baseline: rejection-sampling SFT (METHOD.md, "Baselines and ablations").

The expert samples ``samples_per_problem`` solutions per training problem at ``temperature``
(the evaluation prompt, so answers end in ``\\boxed{}``); a solution is accepted when its final
answer is equivalent to the gold one (the evaluation's own scorer, ``answers.py``); the expert is
LoRA-tuned with cross-entropy on every token of the accepted solutions (one-hot targets through
the same distillation module, LoRA, optimizer and update budget as LightReasoner).

The sampled solutions are kept in a shard store of their own (:class:`SolutionStore`,
``{cache_dir}/sft_solutions/{key}``, keyed by everything that determines them; per-batch atomic
shards, a lock per key, resumable: :mod:`lightreasoner.sampling.shards`), so a sweep samples once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from lightreasoner.data.answers import extract_answer, is_equivalent
from lightreasoner.generation import GenerationSettings, build_engine, engine_key
from lightreasoner.models.spec import ModelSpec, load_model, load_tokenizer
from lightreasoner.data.prompts import EVAL_SYSTEM, encode_prompts, template_fingerprint
from lightreasoner.data.records import Problem, TraceSample
from lightreasoner.core.files import canonical_json
from lightreasoner.sampling.sampler import batch_seed, question_sha
from lightreasoner.sampling.shards import FORMAT_VERSION, ShardStore, fill_missing, tokenizer_fingerprint

from .base import Method, MethodInputs, TrainingData

log = logging.getLogger("lightreasoner")

SOLUTION_KEYS = ("problem_id", "question_sha", "prompt_ids", "solutions", "finished", "correct")
"""Keys of one cached record: a problem's prompt and its ``k`` sampled solutions (id tensors,
each up to and including its end-of-sequence id), whether each finished and was correct."""


@dataclass
class RejectionSFT(Method):
    """Rejection-sampling SFT (the ``sft`` method)."""

    name: str = "sft"
    samples_per_problem: int = 4
    """Solutions sampled per training problem (k)."""
    temperature: float = 0.7
    """Sampling temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus mass, in (0, 1]."""
    max_new_tokens: int | None = None
    """Solution length cap (null: the training dataset's ``max_new_tokens``)."""
    system_prompt: str | None = None
    """System message (null: the evaluation prompt, which asks for a boxed answer)."""
    batch_size: int | None = None
    """Problems per generation batch (null: ``sampling.batch_size``); each brings k rows."""
    seed: int = 0
    """Base seed of the sampling (per-batch seeds derive from it and the problem ids)."""
    dedupe: bool = True
    """Train on each distinct accepted solution of a problem once."""

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"method.{key}: expected {expected}, got {getattr(self, key)!r}")

        if isinstance(self.samples_per_problem, bool) or not isinstance(self.samples_per_problem, int) or self.samples_per_problem < 1:
            raise bad("samples_per_problem", "an integer >= 1")
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise bad("temperature", "a number > 0")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise bad("top_p", "0 < top_p <= 1")
        for key in ("max_new_tokens", "batch_size"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise bad(key, "an integer >= 1 or null")

    def system_message(self) -> str:
        """The sampling prompt's system message (``system_prompt``, or the evaluation's)."""
        return EVAL_SYSTEM if self.system_prompt is None else self.system_prompt

    def generation_key(self, max_new_tokens: int) -> dict:
        return {
            "samples_per_problem": self.samples_per_problem,
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "max_new_tokens": int(max_new_tokens),
            "seed": int(self.seed),
        }

    def check(self, cfg: Any) -> None:
        if str(cfg.distill.get("loss")) == "reverse_kl":
            raise ValueError("distill.loss: reverse_kl gives the sft method's one-hot targets zero loss; use forward_kl or jsd")

    def prepare(self, inputs: MethodInputs) -> TrainingData:
        problems = inputs.problems
        max_new = int(self.max_new_tokens or inputs.max_new_tokens or 512)
        store = sample_solutions(
            self, inputs.expert, problems, inputs.dataset_identity, inputs.cache_dir, max_new,
            batch_size=int(self.batch_size or inputs.sampling["batch_size"]), generation=inputs.generation,
        )
        records = store.read([p.id for p in problems])
        samples = solution_samples(records, dedupe=self.dedupe)
        drawn = sum(len(r["solutions"]) for r in records)
        accepted = sum(int(r["correct"].sum()) for r in records)
        if not samples:
            raise ValueError(
                f"method.samples_per_problem: none of the {drawn} sampled solutions was correct; raise "
                "method.samples_per_problem or method.temperature, or sample more problems"
            )
        steps = sum(s.num_steps for s in samples)
        statistics = {
            "sft_cache": str(store.path),
            "problems": len(problems),
            "solutions_sampled": drawn,
            "solutions_accepted": accepted,
            "acceptance_rate": accepted / drawn if drawn else 0.0,
            "problems_with_a_correct_solution": sum(bool(r["correct"].any()) for r in records),
            "training_solutions": len(samples),
            "kept_steps": steps,
            "steps": sum(int(sum(x.numel() for x in r["solutions"])) for r in records),
            "mean_solution_tokens": steps / len(samples),
        }
        log.info("sft selection: %s", json.dumps(statistics))
        return TrainingData(samples=samples, sample_key=store.key, statistics=statistics,
                            cost={**store.recorded_cost(), "cached": not store.sampled_now}, training_problems=len(problems))


def solution_samples(records: Sequence[Mapping], dedupe: bool = True) -> list[TraceSample]:
    """Accepted solutions -> TraceSamples with a one-hot target at every solution token
    (cross-entropy on the whole solution, end-of-sequence token included)."""
    out = []
    for rec in records:
        prompt = rec["prompt_ids"].long()
        seen: set[tuple[int, ...]] = set()
        for sol, ok in zip(rec["solutions"], rec["correct"].tolist()):
            key = tuple(sol.tolist())
            if not ok or not key or (dedupe and key in seen):
                continue
            seen.add(key)
            sol = sol.long()
            steps = torch.arange(sol.numel())
            out.append(
                TraceSample(
                    problem_id=str(rec["problem_id"]),
                    input_ids=torch.cat([prompt, sol]),
                    positions=steps + len(prompt) - 1,
                    steps=steps,
                    target_ids=[sol[j : j + 1].clone() for j in range(sol.numel())],
                    target_w=[torch.ones(1) for _ in range(sol.numel())],
                )
            )
    return out


class SolutionStore(ShardStore):
    """One key directory of the sampled solutions, ``{cache_dir}/sft_solutions/{key}``."""

    kind = "sft_solutions"
    label = "sft solutions"
    what = "sampled solutions"
    record_keys = SOLUTION_KEYS

    def stats(self, records: Sequence[Mapping]) -> dict:
        """Problems, solutions drawn and accepted, and the acceptance rate."""
        drawn = sum(len(r["solutions"]) for r in records)
        accepted = sum(int(r["correct"].sum()) for r in records)
        return {"counts": {"problems": len(records), "solutions": drawn, "accepted": accepted,
                           "acceptance_rate": accepted / drawn if drawn else 0.0}}


def solution_key_fields(
    method: RejectionSFT,
    expert: ModelSpec,
    problems: Sequence[Problem],
    dataset_ident: Mapping,
    tokenizer,
    max_new_tokens: int,
    generation: Mapping | None = None,
) -> dict:
    """Everything that determines the sampled solutions (the store's key fields)."""
    system = method.system_message()
    fields = {
        "kind": "sft_solutions",
        "format_version": FORMAT_VERSION,
        "expert": expert.identity(),
        "dataset": json.loads(canonical_json(dict(dataset_ident))),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "prompt_template": template_fingerprint(tokenizer, system or None),
        "system_prompt": system,
        "generation": method.generation_key(max_new_tokens),
        "answer_types": sorted({p.answer_type for p in problems}),
    }
    if engine_key(generation) is not None:
        fields["engine"] = engine_key(generation)
    return fields


def sample_solutions(
    method: RejectionSFT,
    expert: ModelSpec,
    problems: Sequence[Problem],
    dataset_ident: Mapping,
    cache_dir: str | os.PathLike,
    max_new_tokens: int,
    batch_size: int = 16,
    generation: Mapping | None = None,
    model=None,
    tokenizer=None,
) -> SolutionStore:
    """Make sure every problem has its ``k`` sampled, verified solutions in the store; return it.

    Only missing problems are sampled (:func:`~lightreasoner.sampling.shards.fill_missing`:
    batches fixed by problem index, each seeded from ``method.seed`` and its problem ids, so a
    resumed run draws what an uninterrupted one would; a lock per key). ``model`` and
    ``tokenizer`` may be the expert's, already built (tests); ``expert`` still gives the
    identity for the key.
    """
    problems = list(problems)
    if not problems:
        raise ValueError("dataset: no training problems to sample solutions for")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(expert, "model_pair.expert")
    store = SolutionStore.at(cache_dir, solution_key_fields(method, expert, problems, dataset_ident, tokenizer, max_new_tokens, generation))

    def sample(groups: list[list[int]]) -> dict:
        engine = build_engine(generation, model if model is not None else (lambda: load_model(expert, "model_pair.expert")), tokenizer, spec=expert)
        settings = GenerationSettings(max_new_tokens, do_sample=True, temperature=method.temperature, top_p=method.top_p)
        prompt_ids = encode_prompts(tokenizer, [p.question for p in problems], method.system_message() or None)
        tokens = 0
        for group in tqdm(groups, desc="sft: sampling solutions", unit="batch"):
            records = solution_records(method, engine, settings, [problems[i] for i in group], [prompt_ids[i] for i in group])
            tokens += sum(int(x.numel()) for r in records for x in r["solutions"])
            store.write_shard(records)
        return {"generated_tokens": tokens}

    fill_missing(store, [p.id for p in problems], batch_size, sample, {"method": method.settings(), "max_new_tokens": max_new_tokens})
    return store


def solution_records(method: RejectionSFT, engine, settings: GenerationSettings, problems: Sequence[Problem],
                     prompt_ids: Sequence[Sequence[int]]) -> list[dict]:
    """One batch: the expert samples ``k`` solutions per problem (seeded from ``method.seed`` and
    the problem ids), each checked against the gold answer -> one record per problem."""
    k = method.samples_per_problem
    rows = [prompt for prompt in prompt_ids for _ in range(k)]
    out = engine.generate_batch(rows, settings, seed=batch_seed(method.seed, [p.id for p in problems]))
    gens = [engine.finish(row, 0.0) for row in out.tokens.tolist()]
    records = []
    for j, p in enumerate(problems):
        mine = gens[j * k : (j + 1) * k]
        correct = [bool(is_equivalent(extract_answer(g.text, p.answer_type), p.answer, p.answer_type)) for g in mine]
        records.append({
            "problem_id": p.id,
            "question_sha": question_sha(p.question),
            "prompt_ids": torch.tensor(prompt_ids[j], dtype=torch.long),
            "solutions": [torch.tensor(g.token_ids, dtype=torch.long) for g in mine],
            "finished": torch.tensor([not g.cut_off for g in mine]),
            "correct": torch.tensor(correct),
        })
    return records
