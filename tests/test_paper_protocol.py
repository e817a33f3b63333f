"""The paper presets follow the published protocol: update composition, prompt, stop tokens,
question formats (each pinned against what the published code / the Qwen2.5-Math toolkit do)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _samples import random_trace_samples
from hydra import compose, initialize_config_dir

import lightreasoner.config  # noqa: F401
from lightreasoner.datamodule import DistillDataModule
from lightreasoner.prompts import EVAL_SYSTEM, chat_prompt
from lightreasoner.tiny import build_char_tokenizer

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

    from lightreasoner.benchmarks import dataset_config
    from lightreasoner.eval.evaluate import evaluate
    from lightreasoner.models import ModelSpec, load_tokenizer

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
    from lightreasoner.benchmarks import dataset_config, load_problems

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
