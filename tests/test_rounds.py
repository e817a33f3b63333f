"""rounds (top-level; distill.rounds before issue 30): iterated rounds on the tiny pair. Round 2's expert is round 1's tuned model
(its adapter merged), its traces are cached under their own key and scored with that model,
and each round's evaluation is in the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from lightreasoner.models.spec import ModelSpec, load_model
from lightreasoner.sampling.trace_cache import TraceCache

from _tiny_pair import reference_step

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, tiny_pair_dirs, *extra):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for split, n in (("train", 4), ("test", 3)):
        rows = [{"question": f"Tom has {3 + i} apples and buys {4 + i} more. How many?", "answer": f"#### {7 + 2 * i}"} for i in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [
        "experiment=coder_cpu", "logger=none",
        f"model_pair.expert.name_or_path={tiny_pair_dirs['expert']}", "model_pair.expert.gguf_file=null",
        f"model_pair.amateur.name_or_path={tiny_pair_dirs['amateur']}", "model_pair.amateur.gguf_file=null",
        "model_pair.expert.device=cpu", "model_pair.amateur.device=cpu",
        f"dataset.files.train={data / 'train.jsonl'}", f"dataset.files.test={data / 'test.jsonl'}",
        "dataset.max_problems=4", "sampling.batch_size=4", "sampling.max_new_tokens=8", "selection.beta=0.0",
        "trainer.max_steps=3", "trainer.enable_checkpointing=false", "distill.steps_per_batch=8", "optimizer.lr=0.5",
        "eval.max_problems=3", "eval.max_new_tokens=8", "eval.batch_size=3",
        f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'run'}", *extra,
    ]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_round_two_samples_with_round_ones_tuned_expert_under_its_own_key(tmp_path, tiny_pair_dirs):
    from lightreasoner.run.main import run

    run(_cfg(tmp_path, tiny_pair_dirs, "rounds=2", "distill.merge=false"))
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    r1, r2 = summary["rounds"]
    assert (r1["round"], r2["round"]) == (1, 2)
    assert r1["sample_key"] != r2["sample_key"] and summary["sample_key"] == r2["sample_key"]

    # round 1 merged its adapter (distill.merge=false notwithstanding); round 2's expert is that model
    merged1 = out / "round1" / "merged"
    assert r1["adapter_dir"] == str(out / "round1" / "adapter") and r1["merged_dir"] == str(merged1)
    assert json.loads((merged1 / "lightreasoner.json").read_text())["adapter"]["path"] == str((out / "round1" / "adapter").resolve())
    assert r2["expert"] == str(merged1) and r1["expert"] == tiny_pair_dirs["expert"]
    key2 = TraceCache.open(tmp_path / "cache", r2["sample_key"]).fields
    assert key2["expert"]["local"] == str(merged1.resolve())
    assert TraceCache.open(tmp_path / "cache", r1["sample_key"]).fields["expert"]["local"] == str(Path(tiny_pair_dirs["expert"]).resolve())
    # the final adapter was trained on round 1's tuned model and is the run's tuned model
    assert json.loads((out / "adapter" / "lightreasoner.json").read_text())["base"]["name_or_path"] == str(merged1)
    assert summary["adapter_dir"] == str(out / "adapter") and summary["merged_dir"] is None

    # round 2's traces were scored with round 1's tuned expert, not the original one
    rec = TraceCache.open(tmp_path / "cache", r2["sample_key"]).read_all()[0]
    tuned = load_model(ModelSpec(str(merged1), device="cpu"))
    base = load_model(ModelSpec(tiny_pair_dirs["expert"], device="cpu"))
    amateur = load_model(ModelSpec(tiny_pair_dirs["amateur"], device="cpu"))
    prompt, trace = rec["prompt_ids"].tolist(), rec["trace_ids"].tolist()
    gap = 0.0
    for t in range(len(trace)):
        kl_tuned = float(reference_step(tuned, amateur, prompt, trace, t, 0.01, 256)[1])
        kl_base = float(reference_step(base, amateur, prompt, trace, t, 0.01, 256)[1])
        assert float(rec["kl"][t]) == pytest.approx(kl_tuned, abs=1e-4), t
        gap = max(gap, abs(kl_tuned - kl_base))
    assert gap > 1e-3  # the two experts really differ there

    # each round evaluated against the original expert; the run's evaluation is the last round's
    for r in (r1, r2):
        assert set(r["eval"]) == {"base", "tuned"}
        assert r["selection"]["kept_steps"] > 0 and r["tuned_tokens"] > 0
    assert summary["eval"] == r2["eval"]
    assert (out / "round1" / "eval" / "report.json").is_file() and (out / "eval" / "report.json").is_file()
    base_acc = {r["eval"]["base"]["gsm8k"] for r in (r1, r2)}
    assert len(base_acc) == 1


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["rounds=0"], r"^rounds: expected an integer >= 1"),
        (["rounds=2", "stage=sample"], r"^rounds: 2 rounds each sample, train and evaluate; they need stage=all"),
        (["rounds=2", "method=contrastive_decoding"], r"^rounds: method 'contrastive_decoding' trains nothing"),
    ],
)
def test_bad_rounds_are_one_error_before_any_work(tmp_path, tiny_pair_dirs, extra, msg):
    from lightreasoner.run.validation import validate

    with pytest.raises(ValueError, match=msg):
        validate(_cfg(tmp_path, tiny_pair_dirs, *extra))
    assert not (tmp_path / "cache").exists()


def test_one_round_is_todays_run(tmp_path, tiny_pair_dirs):
    """rounds=1 (the default) leaves the summary without a rounds entry."""
    from lightreasoner.run.main import run

    state = run(_cfg(tmp_path, tiny_pair_dirs, "eval.models=[tuned]"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "rounds" not in summary and state.rounds == [] and not (tmp_path / "run" / "round1").exists()
    assert torch.is_tensor(state.samples[0].input_ids)
