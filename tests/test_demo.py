"""The offline demo: synthetic task, its tokenizer, and the cached tiny pair (shrunken)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightreasoner.data import prompts
from lightreasoner.demo import task as T
from lightreasoner.demo.pair import DemoConfig, demo_root, load_manifest, prepare_demo

REPO = Path(__file__).resolve().parents[1]
SMALL = T.TaskConfig(seed=7, train_size=300, validation_size=60, test_size=80)


@pytest.fixture(scope="module")
def splits():
    return T.generate_splits(SMALL)


def test_generator_is_deterministic_and_seeded(splits):
    again = T.generate_splits(SMALL)
    assert [p.to_row() for s in T.SPLITS for p in splits[s]] == [p.to_row() for s in T.SPLITS for p in again[s]]
    other = T.generate_splits(replace(SMALL, seed=8))
    assert [p.question for p in other["test"]] != [p.question for p in splits["test"]]
    # evaluation splits do not move when the training set grows
    bigger = T.generate_splits(replace(SMALL, train_size=400))
    assert [p.question for p in bigger["test"]] == [p.question for p in splits["test"]]
    assert [p.question for p in bigger["validation"]] == [p.question for p in splits["validation"]]


def test_splits_have_their_sizes_and_are_disjoint(splits):
    assert {s: len(v) for s, v in splits.items()} == {"train": 300, "validation": 60, "test": 80}
    qs = {s: [p.question for p in v] for s, v in splits.items()}
    for s in T.SPLITS:
        assert len(set(qs[s])) == len(qs[s]), f"duplicate question inside {s}"
    assert not set(qs["train"]) & set(qs["validation"])
    assert not set(qs["train"]) & set(qs["test"])
    assert not set(qs["validation"]) & set(qs["test"])


def test_answers_are_correct_recomputed(splits):
    cfg = SMALL
    for p in (p for v in splits.values() for p in v):
        # from the structure
        x = p.start
        assert 2 <= x <= cfg.max_value
        assert cfg.min_steps <= len(p.ops) <= cfg.max_steps
        for op, n in p.ops:
            x = T.apply_op(x, op, n)
            assert 0 <= x <= cfg.max_value
            assert str(n) in p.question
        assert p.answer == str(x)
        # from the text: every equation recomputed, chained, boxed answer = last result
        assert T.check_solution(p.solution) == p.answer
        eqs = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)\.", p.solution)
        assert len(eqs) == len(p.ops)
        assert p.solution.endswith(f"The answer is \\boxed{{{p.answer}}}.")
        assert str(p.start) in p.question and p.question.endswith("?")
    # varied wording: several scenes and many distinct opening sentences
    openings = {p.question.split(".")[0].split()[1] for p in splits["train"]}
    assert len(openings) >= 5


def test_check_solution_catches_errors():
    assert T.check_solution("3 + 4 = 7. 7 * 2 = 14. The answer is \\boxed{14}.") == "14"
    with pytest.raises(ValueError, match="wrong equation"):
        T.check_solution("3 + 4 = 8. The answer is \\boxed{8}.")
    with pytest.raises(ValueError, match="chain"):
        T.check_solution("3 + 4 = 7. 6 * 2 = 12. The answer is \\boxed{12}.")
    with pytest.raises(ValueError, match="boxed"):
        T.check_solution("3 + 4 = 7. The answer is \\boxed{8}.")


def test_write_and_load_with_the_dataset_config(splits, tmp_path):
    from lightreasoner.data.answers import extract_answer, is_equivalent
    from lightreasoner.data.benchmarks import load_problems

    paths = T.write_splits(splits, tmp_path)
    assert sorted(p.name for p in paths.values()) == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    rows = T.read_split(paths["test"])
    assert rows == [p.to_row() for p in splits["test"]]
    raw = OmegaConf.load(REPO / "conf" / "dataset" / "demo.yaml")
    ds = OmegaConf.to_container(OmegaConf.create({"paths": {"demo_dir": str(tmp_path)}, "d": raw}).d, resolve=True)
    for split in T.SPLITS:
        probs = load_problems(ds, split, max_problems=0)
        assert [p.question for p in probs] == [p.question for p in splits[split]]
        assert all(p.answer_type == "numeric" for p in probs)
    # the evaluation code scores a reference solution as correct, and a wrong one as wrong
    for p in splits["validation"][:20]:
        assert is_equivalent(extract_answer(p.solution, "numeric"), p.answer, "numeric")
        assert not is_equivalent(extract_answer(p.solution, "numeric"), str(int(p.answer) + 1), "numeric")


def test_tokenizer_round_trip_and_digits(splits):
    tok = T.build_demo_tokenizer()
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.get_vocab() == T.build_demo_tokenizer().get_vocab()  # ids stable across builds
    texts = [p.question for p in splits["test"][:40]] + [p.solution for p in splits["test"][:40]]
    texts += [prompts.chat_prompt(tok, splits["test"][0].question, s) for s in (prompts.SAMPLING_SYSTEM, prompts.EVAL_SYSTEM)]
    texts += ["Unseen words: Zebra 1234567890 quux!"]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids
        for t in tok.convert_ids_to_tokens(ids):
            if any(c.isdigit() for c in t):
                assert len(t) == 1, f"digit merged into token {t!r}"
    # words make sequences short: far fewer tokens than characters
    sol = splits["test"][0].question
    assert len(tok(sol, add_special_tokens=False)["input_ids"]) < 0.5 * len(sol)
    # special tokens stay whole inside the chat template
    prompt_ids = tok(prompts.chat_prompt(tok, "Hi?", prompts.EVAL_SYSTEM), add_special_tokens=False)["input_ids"]
    assert prompt_ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3


def _tiny_demo_cfg(**over):
    d = {
        "task": {"seed": 3, "train_size": 48, "validation_size": 8, "test_size": 8},
        "expert": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                   "train_steps": 4, "batch_size": 16, "warmup_steps": 1},
        "amateur": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32,
                    "train_steps": 2, "batch_size": 16, "warmup_steps": 1},
        "eval_problems": 8,
        "max_new_tokens": 8,
        "progress": False,
    }
    d.update(over)
    return OmegaConf.merge(OmegaConf.load(REPO / "conf" / "demo" / "default.yaml"), d)


def test_default_config_file_is_complete():
    raw = OmegaConf.load(REPO / "conf" / "demo" / "default.yaml")
    cfg = DemoConfig.from_any(raw)
    # every dataclass field is set in the yaml (documented there), and nothing else is
    plain = OmegaConf.to_container(raw)
    assert set(plain) == set(DemoConfig.__dataclass_fields__)
    for member in ("expert", "amateur", "task"):
        assert set(plain[member]) == set(type(getattr(cfg, member)).__dataclass_fields__)
    # the dataclass defaults are the shipped yaml: DemoConfig() in Python is the demo that `python train.py` builds
    assert cfg == DemoConfig()
    # every field is documented by a comment on its line (the amateur block mirrors the expert's)
    block = None
    for line in (REPO / "conf" / "demo" / "default.yaml").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            block = line.split(":")[0]
        if block != "amateur":
            assert "#" in line, f"undocumented field: {line!r}"
    with pytest.raises(ValueError, match="unknown field"):
        DemoConfig.from_any({"expert": {"hidden": 3}})
    with pytest.raises(ValueError, match="unknown field"):
        DemoConfig.from_any({"tsak": {}})
    with pytest.raises(ValueError, match="min_steps"):
        DemoConfig.from_any({"task": {"min_steps": 3, "max_steps": 2}})
    # progress / num_threads do not change the cache key; anything else does
    a = DemoConfig.from_any(raw)
    assert a.key() == DemoConfig.from_any(OmegaConf.merge(raw, {"progress": False, "num_threads": 1})).key()
    assert a.key() != DemoConfig.from_any(OmegaConf.merge(raw, {"expert": {"train_steps": 301}})).key()


def test_prepare_demo_builds_caches_and_loads(tmp_path):
    from lightreasoner.models.spec import ModelSpec, check_pair_tokenizers, load_model, load_tokenizer
    from lightreasoner.demo.pair import greedy_generate

    cfg = _tiny_demo_cfg()
    t0 = time.perf_counter()
    dirs = prepare_demo(cfg, tmp_path)
    first = time.perf_counter() - t0
    root = demo_root(cfg, tmp_path)
    assert Path(dirs["expert_dir"]) == root / "expert" and Path(dirs["data_dir"]) == root / "data"
    assert root.parent == tmp_path / "demo"
    # nothing but the finished directory and its lock remain
    assert sorted(p.name for p in root.parent.iterdir()) == sorted([root.name, root.name + ".lock"])
    assert not (root / "_work").exists()

    t0 = time.perf_counter()
    again = prepare_demo(cfg, tmp_path)
    second = time.perf_counter() - t0
    assert again == dirs
    assert second < 1.0 and second < first / 5, (first, second)

    man = load_manifest(dirs)
    assert man["key"] == root.name and man["split_sizes"] == {"train": 48, "validation": 8, "test": 8}
    for name in ("expert", "amateur"):
        m = man["members"][name]
        assert m["steps"] == cfg[name].train_steps and m["seconds"] > 0 and m["params"] > 0
        assert m["validation"]["n"] == 8 and 0.0 <= m["validation"]["accuracy"] <= 1.0
    assert man["members"]["expert"]["params"] > man["members"]["amateur"]["params"]
    assert [json.loads(l) for l in open(Path(dirs["data_dir"]) / "test.jsonl")][0].keys() == {"question", "answer", "solution"}

    specs = {n: ModelSpec(name_or_path=dirs[f"{n}_dir"], dtype="float32", device="cpu") for n in ("expert", "amateur")}
    toks = {n: load_tokenizer(s, n) for n, s in specs.items()}
    check_pair_tokenizers(toks["expert"], toks["amateur"])
    assert toks["expert"].get_vocab() == T.build_demo_tokenizer().get_vocab()
    model = load_model(specs["expert"], "expert")
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(toks["expert"])
    out = greedy_generate(model, toks["expert"], ["Tom has 3 apples. He buys 4 more. How many apples does Tom have now?"],
                          max_new_tokens=5)
    assert len(out) == 1


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    import lightreasoner.demo.pair as P

    def boom(*a, **k):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(P, "train_member", boom)
    cfg = _tiny_demo_cfg()
    with pytest.raises(KeyboardInterrupt):
        prepare_demo(cfg, tmp_path)
    left = [p.name for p in (tmp_path / "demo").iterdir() if not p.name.endswith(".lock")]
    assert left == []
    assert not demo_root(cfg, tmp_path).exists()
