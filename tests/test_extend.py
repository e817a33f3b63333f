"""docs/how-to/extend.md's worked examples, run as they are written (issue 30): a step rule, a method,
a generation engine and a benchmark, each two files. Every block marked ``<!-- example: NAME -->``
on the page is read here; the Python blocks are executed as modules, the YAML blocks composed."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from _demo_overrides import SHRUNKEN_DEMO
from omegaconf import OmegaConf, open_dict

from lightreasoner.data.benchmarks import check_dataset_config, load_problems
from lightreasoner.generation import GenerationSettings, HFEngine, check_engine_config
from lightreasoner.selection.select import RULES, SelectionSettings, select

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "how-to" / "extend.md"


def examples() -> dict[str, str]:
    text = PAGE.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- example: (\w+) -->\n```\w*\n(.*?)```", text, re.S)}


def as_module(name: str, code: str) -> types.ModuleType:
    """The example's code as an importable module (so a ``_target_`` can name it)."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(code, f"docs/how-to/extend.md:{name}", "exec"), module.__dict__)  # noqa: S102 - the page's own example
    return module


def test_the_page_has_every_example_and_says_two_files_each():
    assert set(examples()) >= {"rule", "method", "method_yaml", "engine", "engine_yaml", "benchmark_yaml", "benchmark_data"}
    table = PAGE.read_text().split("| to add | the two files |", 1)[1].split("\n\n", 1)[0]
    assert len([line for line in table.splitlines() if line.startswith("| a ")]) == 4


def _record(pid, kl, n_cands=2):
    steps = len(kl)
    logp = torch.log(torch.tensor([0.6, 0.3]))
    return {
        "problem_id": pid, "question_sha": "0" * 16, "prompt_ids": torch.tensor([10, 11]),
        "trace_ids": torch.arange(20, 20 + steps), "finished": True, "kl": torch.tensor(kl),
        "max_logp_e": logp[:1].repeat(steps), "cand_offsets": torch.arange(0, n_cands * steps + 1, n_cands),
        "cand_ids": torch.arange(30, 30 + n_cands).repeat(steps).int(), "cand_logp_e": logp.repeat(steps),
        "cand_logp_a": torch.log(torch.tensor([0.2, 0.7])).repeat(steps),
    }


def test_the_step_rule_example_registers_and_selects():
    as_module("lr_extend_rule", examples()["rule"])
    assert "late_kl" in RULES
    recs = [_record("t/0", [0.9, 0.5, 0.1, 0.8, 0.6, 0.2]), _record("t/1", [0.7, 0.1, 0.9, 0.05])]
    settings = SelectionSettings(rule="late_kl")
    settings.validate()  # the name is known once registered: selection.rule=late_kl passes validation
    late = {s.problem_id: s.steps.tolist() for s in select(recs, selector=settings, alpha_min=0.1)}
    kl = {s.problem_id: s.steps.tolist() for s in select(recs, alpha_min=0.1)}
    assert late == {"t/0": [3, 4], "t/1": [2]} and all(set(late[k]) <= set(kl[k]) for k in late)


def test_the_engine_example_decodes_as_transformers_greedy(tiny_pair_dirs):
    from lightreasoner.models.spec import ModelSpec, load_model, load_tokenizer

    module = as_module("lr_extend_engine", examples()["engine"])
    spec = ModelSpec(name_or_path=tiny_pair_dirs["expert"], device="cpu")
    model, tok = load_model(spec), load_tokenizer(spec)
    prompts = [tok("What is 2 + 3?")["input_ids"], tok("12 - 5")["input_ids"]]
    settings = GenerationSettings(max_new_tokens=6)
    ours = module.LoopEngine(model, tok).generate(prompts, settings, batch_size=2, progress=False)
    ref = HFEngine(model, tok).generate(prompts, settings, batch_size=2, progress=False)
    assert [g.token_ids for g in ours] == [g.token_ids for g in ref]
    yaml = OmegaConf.create(examples()["engine_yaml"])
    with open_dict(yaml):
        yaml._target_ = "lr_extend_engine.LoopEngine"  # the page's module path, here the executed example
    check_engine_config(yaml)


def test_the_benchmark_example_loads_and_validates(tmp_path):
    data = tmp_path / "tiny_sums" / "test.jsonl"
    data.parent.mkdir()
    data.write_text(examples()["benchmark_data"])
    node = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "d": OmegaConf.create(examples()["benchmark_yaml"])})
    cfg = OmegaConf.to_container(node, resolve=True)["d"]
    check_dataset_config(cfg, "test")
    problems = load_problems(cfg, split="test", max_problems=0)
    assert [(p.question, p.answer) for p in problems] == [("What is 2 + 3?", "5"), ("What is 10 - 4?", "6")]


def test_the_method_example_trains_a_run(tmp_path, monkeypatch):
    """The page's method and its YAML, through a whole shrunken demo run in-process."""
    from lightreasoner.run.cli import Composer
    from lightreasoner.run.main import run

    as_module("lr_extend_method", examples()["method"])
    monkeypatch.setenv("LIGHTREASONER_CACHE", str(tmp_path / "cache"))
    composer = Composer()
    try:
        cfg = composer.compose([*SHRUNKEN_DEMO, "selection.beta=0.0", "logger=none", "eval.models=[base,tuned]", "distill.merge=false"])
    finally:
        composer.close()
    method = OmegaConf.create(examples()["method_yaml"])
    with open_dict(cfg):
        cfg.method = method
        cfg.method._target_ = "lr_extend_method.HardLabels"  # the page's module path, here the executed example
        cfg.paths.output_dir = str(tmp_path / "run")
    state = run(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["method"] == "hard_labels"
    assert summary["selection"]["hard_labels"] is True and state.tuned_tokens > 0
    assert all(len(w) == 1 and float(w[0]) == 1.0 for s in state.samples for w in s.target_w)


@pytest.fixture(autouse=True)
def _forget_examples():
    yield
    for name in [m for m in sys.modules if m.startswith("lr_extend_")]:
        del sys.modules[name]
    RULES.pop("late_kl", None)
