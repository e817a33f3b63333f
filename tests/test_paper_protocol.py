"""The paper presets follow the published protocol: update composition, prompt, stop tokens,
question formats (each pinned against what the published code / the Qwen2.5-Math toolkit do)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _samples import random_trace_samples
from hydra import compose, initialize_config_dir

import lightreasoner.core.config  # noqa: F401
from lightreasoner.training.datamodule import DistillDataModule
from lightreasoner.data.prompts import EVAL_SYSTEM, chat_prompt
from lightreasoner.models.tiny import build_char_tokenizer

CONF = Path(__file__).resolve().parents[1] / "conf"
PAPER = sorted(p.stem for p in (CONF / "experiment").glob("paper_*.yaml"))


def _compose(overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize("experiment", PAPER)
def test_paper_presets_train_on_exactly_16_kept_steps_per_update(experiment):
    cfg = _compose([f"experiment={experiment}"])
    assert cfg.distill.packing is False and cfg.distill.steps_per_batch == 8 and cfg.trainer.accumulate_grad_batches == 2
    assert cfg.eval.prompt_template == "qwen25-math-cot"
    # a real DistillDataModule pass over traces with many kept steps each (packing would put
    # such a trace alone in a micro-batch): every full update holds 8 x 2 = 16 kept steps
    dm = DistillDataModule(random_trace_samples(40, 1, vocab=50, min_len=40, max_len=60, max_steps=30, max_cands=3, prompt=5), steps_per_batch=cfg.distill.steps_per_batch,
                           accumulate_grad_batches=cfg.trainer.accumulate_grad_batches, packing=cfg.distill.packing, pad_token_id=0)
    steps = [int(b["num_steps"]) for b in dm.epoch_batches(0)]
    updates = [sum(steps[i : i + 2]) for i in range(0, len(steps) - len(steps) % 2, 2)]
    assert updates and all(u == 16 for u in updates[:-1])
    packed = DistillDataModule(random_trace_samples(40, 1, vocab=50, min_len=40, max_len=60, max_steps=30, max_cands=3, prompt=5), steps_per_batch=8, accumulate_grad_batches=2, pad_token_id=0)
    assert max(int(b["num_steps"]) for b in packed.epoch_batches(0)) > 8  # what the switch avoids


def test_toolkit_prompt_and_stop_tokens():
    tok = build_char_tokenizer()
    text = chat_prompt(tok, "What is 2+2?", EVAL_SYSTEM, "qwen25-math-cot")
    assert text == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    cfg = _compose([])
    assert list(cfg.eval.stop_tokens) == ["<|im_end|>", "<|endoftext|>"]
    with pytest.raises(ValueError, match="eval.prompt_template"):
        chat_prompt(tok, "x", None, "nope")


def test_stop_tokens_end_evaluation_generation(tiny_pair_dirs, data_dir, tmp_path):
    """A stop token that is not the tokenizer's eos still ends generation (here: any id the
    model produces first, declared a stop token)."""
    import json

    from lightreasoner.data.benchmarks import dataset_config
    from lightreasoner.eval.evaluate import evaluate
    from lightreasoner.models.spec import ModelSpec, load_tokenizer

    spec = ModelSpec(tiny_pair_dirs["expert"], device="cpu")
    models = [{"name": "base", "ref": spec.to_dict()}]
    cfg = {"batch_size": 2, "max_problems": 2, "max_new_tokens": 6, "stop_tokens": []}
    evaluate(models, [dataset_config("gsm8k", data_dir)], cfg, tmp_path / "a", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "a" / "base" / "gsm8k.jsonl").read_text().splitlines()]
    tok = load_tokenizer(spec)
    first = tok.convert_ids_to_tokens(tok(rows[0]["generated"], add_special_tokens=False)["input_ids"][:1])[0]
    evaluate(models, [dataset_config("gsm8k", data_dir)], {**cfg, "stop_tokens": [first]}, tmp_path / "b", progress=False)
    stopped = [json.loads(x) for x in (tmp_path / "b" / "base" / "gsm8k.jsonl").read_text().splitlines()]
    assert stopped[0]["num_tokens"] == 1 and not stopped[0]["cut_off"]


def test_paper_presets_use_full_math_and_the_papers_amateurs(tmp_path):
    from lightreasoner.data.benchmarks import dataset_config, load_problems

    cfg = _compose(["experiment=paper_qwen25_math_1.5b"])
    assert "math" in cfg.eval.benchmarks and "math500" not in cfg.eval.benchmarks
    row = {"problem": "What is $1+1$?", "solution": "Clearly $1+1=\\boxed{2}$.", "level": "Level 1", "type": "Algebra"}
    (tmp_path / "math").mkdir()
    (tmp_path / "math" / "test.jsonl").write_text(__import__("json").dumps(row) + "\n")
    (p,) = load_problems(dataset_config("math", tmp_path), split="test")
    assert p.question == "What is $1+1$?" and p.answer == "2" and p.answer_type == "latex"
    amateurs = (CONF / "sweep" / "amateurs.yaml").read_text()
    for name in ("Qwen/Qwen2.5-0.5B,", "Qwen/Qwen2.5-1.5B,", "Qwen/Qwen2.5-Math-1.5B-Instruct"):
        assert name in amateurs


# ---------------------------------------------------------------- published quirks (item 7)


def test_quirks_preset_turns_on_exactly_the_three_switches():
    off, on = _compose(["experiment=paper_qwen25_math_1.5b_instruct"]), _compose(["experiment=paper_qwen25_math_1.5b_instruct", "quirks=published"])
    flags = [("sampling", "published_generation"), ("distill", "published_loss_column"), ("distill", "published_softmax_width")]
    assert all(off[g][k] is False for g, k in flags) and all(on[g][k] is True for g, k in flags)
    from lightreasoner.run.validation import validate

    on.paths.output_dir = on.trainer.default_root_dir = "/tmp/lr-quirks-test"  # no Hydra run here to fill them
    validate(on)  # the preset is a valid run
    from lightreasoner.training.distill import DistillSettings

    with pytest.raises(ValueError, match="distill.published_loss_column: needs distill.packing=false"):
        DistillSettings.from_cfg({"packing": True, "published_loss_column": True})


def test_published_loss_column_reads_the_last_column_of_right_padded_batches():
    from lightreasoner.training.datamodule import collate_examples

    samples = [x for s in random_trace_samples(3, 0, vocab=20, min_len=8, max_len=14, max_steps=3, max_cands=2, prompt=2) for x in s.split_steps()]
    ours = collate_examples(samples, 0, "right")
    quirk = collate_examples(samples, 0, "right", last_column=True)
    lengths = [int(s.input_ids.numel()) for s in samples]
    assert quirk["loss_cols"].tolist() == [max(lengths) - 1] * len(samples)
    assert ours["loss_cols"].tolist() == [n - 1 for n in lengths]  # each example's own last (kept) position
    assert torch.equal(quirk["input_ids"], ours["input_ids"]) and torch.equal(quirk["target_w"], ours["target_w"])
    with pytest.raises(ValueError, match="published_loss_column"):
        collate_examples(samples, 0, "left", last_column=True)
    dm = DistillDataModule(random_trace_samples(6, 1, vocab=20, min_len=8, max_len=14, max_steps=3, max_cands=2, prompt=2), steps_per_batch=4,
                           accumulate_grad_batches=1, packing=False, pad_token_id=0, published_loss_column=True)
    for b in dm.epoch_batches(0):
        assert set(b["loss_cols"].tolist()) == {b["input_ids"].shape[1] - 1}


def test_published_softmax_width_cuts_special_ids_without_renormalising(tiny_pair_dirs):
    from lightreasoner.core.contrast import distill_loss
    from lightreasoner.training.datamodule import collate_examples
    from lightreasoner.training.distill import DistillModule
    from lightreasoner.data.records import TraceSample

    width = 12  # the "regular" vocabulary: ids >= 12 play the special tokens
    sample = TraceSample(problem_id="p", input_ids=torch.tensor([3, 4, 5, 6, 7]), positions=torch.tensor([3, 4]), steps=torch.tensor([0, 1]),
                         target_ids=[torch.tensor([5, 14]), torch.tensor([2])], target_w=[torch.tensor([0.75, 0.25]), torch.tensor([1.0])],
                         kl=torch.tensor([0.5, 0.6]))
    batch = collate_examples([sample], 0)
    batch.update(update_steps=2, accumulate=1, world_size=1, loss_scale=0.5)
    full = DistillModule({"name_or_path": tiny_pair_dirs["expert"], "device": "cpu"}, max_steps=1)
    cut = DistillModule({"name_or_path": tiny_pair_dirs["expert"], "device": "cpu"}, max_steps=1, softmax_width=width)
    cut.model.load_state_dict(full.model.state_dict())
    with torch.no_grad():
        logits = full.step_logits(batch)
        got_full, got_cut = full.compute_loss(batch)["per_step"], cut.compute_loss(batch)["per_step"]
    assert torch.allclose(got_full, distill_loss(logits, batch["target_ids"], batch["target_w"]))
    logq = torch.log_softmax(logits[:, :width].float(), -1)
    by_hand = torch.tensor([0.75 * (torch.log(torch.tensor(0.75)) - logq[0, 5]), 1.0 * (0.0 - logq[1, 2])])  # 0.25 on id 14 dropped, not renormalised
    assert torch.allclose(got_cut, by_hand, atol=1e-5) and not torch.allclose(got_cut, got_full)


def test_published_generation_uses_the_checkpoint_config_and_processed_scores(tiny_pair_dirs):
    from lightreasoner.generation import GenerationSettings
    from lightreasoner.generation.hf import HFEngine
    from lightreasoner.models.spec import ModelSpec, load_model, load_tokenizer
    from lightreasoner.sampling.sampler import SamplingSettings

    spec = ModelSpec(tiny_pair_dirs["expert"], device="cpu")
    tok, model = load_tokenizer(spec), load_model(spec)
    model.generation_config.do_sample, model.generation_config.top_k, model.generation_config.temperature = True, 3, 0.7
    engine = HFEngine(model, tok)
    prompt = [tok("What is 1+1?", add_special_tokens=False)["input_ids"]]
    raw = engine.generate_batch(prompt, GenerationSettings(4), return_logits=True)
    quirk = engine.generate_batch(prompt, GenerationSettings(4, checkpoint_config=True), return_logits=True, seed=0)
    assert all(torch.isfinite(s).all() for s in raw.logits)  # raw logits, greedy despite the checkpoint's do_sample
    again = engine.generate_batch(prompt, GenerationSettings(4), return_logits=True)
    assert torch.equal(raw.tokens, again.tokens)
    finite = [int(torch.isfinite(s).sum()) for s in quirk.logits]
    assert finite == [3] * len(quirk.logits)  # top_k=3 warper applied: the processed scores
    assert model.generation_config.top_k == 3  # the model's own config is left as it was
    key = SamplingSettings(published_generation=True, seed=5).key_fields()
    assert key["published_generation"] is True and key["seed"] == 5 and "published_generation" not in SamplingSettings().key_fields()
    with pytest.raises(ValueError, match="sampling.published_generation"):
        SamplingSettings(published_generation="yes").validate()
