"""The positive-control demo world (issue 31 §3): the dial ``demo.task.shared_error_rate`` and the
amateur's ``demo.task.amateur_error_rate`` change the pair's cache key (both 0 leave the default
demo's key as it was), the training text carries the dropped-carry heuristic at the documented
share, and the ``positive_control`` preset composes and validates. No training here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lightreasoner.demo.pair import DemoConfig
from lightreasoner.demo.task import (
    TaskConfig,
    apply_op,
    check_solution,
    dropped_carry,
    generate_splits,
    heuristic_solutions,
    tempting_steps,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_KEY = "32860a46fbd080f5"
"""The default demo's key, as shipped (lightreasoner/demo/shipped/manifest.json)."""


def _task(**kw) -> TaskConfig:
    return TaskConfig(**{"train_size": 400, "validation_size": 20, "test_size": 20, **kw})


def test_dial_changes_the_key_and_zero_leaves_the_default():
    assert DemoConfig().key() == DEFAULT_KEY
    off = DemoConfig(task=TaskConfig(shared_error_rate=0.0, amateur_error_rate=0.0))
    assert off.key() == DEFAULT_KEY and "shared_error_rate" not in off.key_dict()["task"]
    keys = {DemoConfig(task=TaskConfig(shared_error_rate=s, amateur_error_rate=1.0)).key() for s in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert len(keys) == 5 and DEFAULT_KEY not in keys
    assert DemoConfig(task=TaskConfig(shared_error_rate=0.5)).key() != DemoConfig(task=TaskConfig(amateur_error_rate=0.5)).key()
    assert DemoConfig(task=TaskConfig(shared_error_rate=0.5)).key() != \
        DemoConfig(task=TaskConfig(shared_error_rate=0.5, heuristic="dropped_carry")).key()
    with pytest.raises(ValueError, match="heuristic"):
        DemoConfig.from_any({"task": {"heuristic": "guess"}})
    with pytest.raises(ValueError, match="shared_error_rate"):
        DemoConfig.from_any({"task": {"shared_error_rate": 1.5}})


PRESET_TASK = {"max_steps": 2, "op_weights": {"+": 0.25, "-": 0.25, "*": 0.4, "/": 0.1}}
"""conf/experiment/positive_control.yaml's task (the sizes aside)."""


def test_add_for_multiply_at_dial_one():
    cfg = _task(**PRESET_TASK)
    train = generate_splits(cfg)["train"]
    sols, counts = heuristic_solutions(train, 1.0, cfg.seed, "expert")
    assert counts["heuristic"] == cfg.heuristic == "add_for_multiply"
    assert counts["tempting_steps"] == sum(len(tempting_steps(p)) for p in train) > 0
    # documented (the preset and docs/results/when_contrast_helps.md): about half the problems
    # have a multiplication; at dial 1 about 0.94 of them (those whose wrong value keeps the rest
    # of the chain valid) are written as an addition
    assert 0.4 <= counts["problems_with_tempting_steps"] / len(train) <= 0.65
    assert 0.88 <= counts["share"] <= 0.99
    for p, s in zip(train, sols):
        if s != p.solution:
            x, n = p.start, p.ops[0][1]
            if p.ops[0][0] == "*":
                assert s.startswith(f"{x} * {n} = {x + n}.")
            break


def test_dropped_carry_solutions_at_dial_one():
    cfg = _task(max_steps=3, op_weights={"+": 0.5, "-": 0.3, "*": 0.1, "/": 0.1}, heuristic="dropped_carry")
    train = generate_splits(cfg)["train"]
    sols, counts = heuristic_solutions(train, 1.0, cfg.seed, "expert", "dropped_carry")
    assert counts["tempting_steps"] == sum(len(tempting_steps(p, "dropped_carry")) for p in train) > 0
    assert 0.85 <= counts["share"] <= 0.97
    assert 0.5 <= counts["problems_with_tempting_steps"] / len(train) <= 0.7
    changed = 0
    for p, s in zip(train, sols):
        if s == p.solution:
            check_solution(s)
            continue
        changed += 1
        with pytest.raises(ValueError):
            check_solution(s)  # a wrong equation: the dropped carry
        assert p.start == int(s.split()[0])
    assert changed == counts["problems_with_heuristic"]
    # the first tempting step of a changed problem reads x + n = x + n - 10
    p, s = next((p, s) for p, s in zip(train, sols) if s != p.solution and tempting_steps(p, "dropped_carry")[0] == 0)
    (op, n), x = p.ops[0], p.start
    assert s.startswith(f"{x} + {n} = {dropped_carry(x, n)}.") and dropped_carry(x, n) == apply_op(x, op, n) - 10


def test_dial_is_nested_and_zero_is_the_gold():
    cfg = _task()
    train = generate_splits(cfg)["train"]
    assert heuristic_solutions(train, 0.0, cfg.seed, "expert")[0] == [p.solution for p in train]
    wrong = {}
    for rate in (0.25, 0.5, 0.75, 1.0):
        sols, counts = heuristic_solutions(train, rate, cfg.seed, "expert")
        wrong[rate] = {i for i, (p, s) in enumerate(zip(train, sols)) if s != p.solution}
    assert wrong[0.25] <= wrong[0.5] <= wrong[0.75] <= wrong[1.0]
    assert len(wrong[0.25]) < len(wrong[1.0])
    # the splits (test, validation, train questions and gold) do not depend on the dial
    assert [p.solution for p in generate_splits(replace(cfg, shared_error_rate=0.7))["test"]] == \
        [p.solution for p in generate_splits(cfg)["test"]]


def test_preset_composes_and_validates():
    from lightreasoner.run.cli import check_jobs

    jobs = check_jobs(["experiment=positive_control", "-m", "demo.task.shared_error_rate=0,0.75",
                       "method=lightreasoner,no_contrast", "logger=none"])
    assert len(jobs) == 4


def test_preset_demo_config():
    from hydra import compose, initialize_config_dir

    import lightreasoner.core.config  # noqa: F401
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=["experiment=positive_control"])
    demo = DemoConfig.from_any(cfg.demo)
    assert demo.task.amateur_error_rate == 1.0 and 0 < demo.task.shared_error_rate < 1
    assert demo.key() != DEFAULT_KEY and demo.heuristic_on
    assert cfg.eval.split == "test" and cfg.eval.max_problems == 1000


def test_amateur_init_key_and_shape():
    assert DemoConfig(amateur_init="scratch").key() == DEFAULT_KEY
    assert "amateur_init" not in DemoConfig().key_dict()
    expert_shaped = DemoConfig(amateur_init="expert", amateur=replace(DemoConfig().expert, seed=1, train_steps=150))
    expert_shaped.validate()
    assert expert_shaped.key() != replace(expert_shaped, amateur_init="scratch").key()
    with pytest.raises(ValueError, match="amateur_init"):
        DemoConfig(amateur_init="expert").validate()  # the default amateur is smaller than the expert
    with pytest.raises(ValueError, match="amateur_init"):
        DemoConfig(amateur_init="teacher").validate()


def test_tiny_positive_control_build(tmp_path, monkeypatch):
    """A tiny build with the dial on: each member trains on its own text (the manifest counts
    what was written), the amateur starts from the trained expert (amateur_init=expert: its
    first training batch sees the expert's weights), the splits on disk stay correct."""
    import json

    from omegaconf import OmegaConf

    import lightreasoner.demo.pair as P
    from lightreasoner.demo.pair import load_manifest, prepare_demo

    seen = {}
    real_train = P.train_member

    def spy(model, tokenizer, examples, m, name="model", **kw):
        seen[name] = {"examples": examples, "start": {k: v.clone() for k, v in model.state_dict().items()}}
        out = real_train(model, tokenizer, examples, m, name=name, **kw)
        seen[name]["end"] = {k: v.clone() for k, v in model.state_dict().items()}
        return out

    monkeypatch.setattr(P, "train_member", spy)
    member = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "batch_size": 16, "warmup_steps": 1}
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "demo" / "default.yaml"), {
        "task": {"seed": 3, "train_size": 64, "validation_size": 8, "test_size": 8, **PRESET_TASK,
                 "shared_error_rate": 0.5, "amateur_error_rate": 1.0},
        "expert": {**member, "train_steps": 3}, "amateur": {**member, "train_steps": 2, "seed": 1},
        "amateur_init": "expert", "eval_problems": 8, "max_new_tokens": 8, "progress": False,
    })
    dirs = prepare_demo(cfg, tmp_path)
    man = load_manifest(dirs)
    h = man["heuristic"]
    assert h["expert"]["rate"] == 0.5 and h["amateur"]["rate"] == 1.0
    assert 0 < h["expert"]["heuristic_steps"] < h["amateur"]["heuristic_steps"] <= h["amateur"]["tempting_steps"]
    assert seen["expert"]["examples"] != seen["amateur"]["examples"]
    for k, v in seen["expert"]["end"].items():
        assert (seen["amateur"]["start"][k] == v).all(), k
    for row in (json.loads(line) for line in open(Path(dirs["data_dir"]) / "train.jsonl")):
        check_solution(row["solution"])


def test_the_demo_presets_label_their_world(capsys):
    """issue 31 §5: a run says which world it is in: the natural demo names its null and the
    positive control; the positive control says it is one; another preset says nothing."""
    from hydra import compose, initialize_config_dir

    import lightreasoner.core.config  # noqa: F401
    from lightreasoner.run.summary import print_summary

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        about = {e: compose("train", overrides=[f"experiment={e}"]).about for e in ("demo", "positive_control", "coder_cpu")}
        assert compose("train", overrides=["experiment=positive_control", "about=mine"]).about == "mine"
    assert "null" in about["demo"] and "experiment=positive_control" in about["demo"]
    assert about["positive_control"].startswith("POSITIVE CONTROL") and "python train.py" in about["positive_control"]
    assert about["coder_cpu"] is None
    print_summary({"model_pair": "p", "dataset": "d", "beta": 0.4, "alpha": 0.2, "wall_s": {}, "about": about["positive_control"]})
    assert "about this run: POSITIVE CONTROL" in " ".join(capsys.readouterr().out.split())
