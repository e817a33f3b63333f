"""Evaluation stage on tiny random models: generation, per-problem files, resume, comparisons, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightreasoner.eval import evaluate as ev
from lightreasoner.eval import results, stats, tables
from lightreasoner.generation import Engine, GenerationSettings, HFEngine
from lightreasoner.data.prompts import encode_prompts
from lightreasoner.data.benchmarks import dataset_config
from lightreasoner.models.spec import ModelSpec
from lightreasoner.models.tiny import CHATML_TEMPLATE, build_char_tokenizer, build_tiny_model, save_pair_member

BENCHMARKS = ["gsm8k", "math500", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    tok = build_char_tokenizer()
    base = build_tiny_model(tok, seed=3, hidden_size=32, num_layers=2)
    base.generation_config.do_sample = True  # a checkpoint that samples: greedy must override it
    base.generation_config.temperature = 0.7
    other_tok = build_char_tokenizer()
    other_tok.chat_template = CHATML_TEMPLATE.replace("<|im_start|>assistant\n", "<|im_start|>assistant\n\n")
    return {
        "base": str(save_pair_member(base, tok, root / "base")),
        "other_template": str(save_pair_member(base, other_tok, root / "other")),
    }


def _benches(data_dir, names=BENCHMARKS):
    return [dataset_config(n, data_dir) for n in names]


def _cfg(**kw):
    return {"batch_size": 2, "max_problems": 3, "max_new_tokens": 5, "system_prompt": None, "baseline": "base", **kw}


@pytest.fixture
def generate_calls(monkeypatch):
    """Counts the prompts of every Engine.generate call (a list, one entry per call)."""
    calls = []
    real = Engine.generate

    def counting(self, prompt_ids, *a, **k):
        calls.append(len(prompt_ids))
        return real(self, prompt_ids, *a, **k)

    monkeypatch.setattr(Engine, "generate", counting)
    return calls


def test_end_to_end_seven_benchmarks_with_resume(tiny_dirs, data_dir, tmp_path, generate_calls):
    models = [
        {"name": "base", "ref": ModelSpec(name_or_path=tiny_dirs["base"]).to_dict()},
        {"name": "same", "ref": tiny_dirs["base"]},  # the same weights as a plain directory
    ]
    out = tmp_path / "eval"
    report = ev.evaluate(models, _benches(data_dir), _cfg(), out, progress=False)

    assert {(r["model"], r["benchmark"]) for r in report["results"]} == {(m, b) for m in ("base", "same") for b in BENCHMARKS}
    for r in report["results"]:
        rows = [json.loads(line) for line in Path(r["path"]).read_text().splitlines()]
        assert [row["id"] for row in rows] == [f"{r['benchmark']}/test/{i}" for i in range(3)]
        assert set(rows[0]) == {"id", "question", "gold", "generated", "extracted", "correct", "cut_off", "num_tokens", "seconds",
                                "flexible", "format"}
        assert set(rows[0]["flexible"]) == {"extracted", "correct", "scorer"} and set(rows[0]["format"]) == {"answer", "hedging"}
        assert r["accuracy_flexible"] == sum(row["flexible"]["correct"] for row in rows) / 3 >= r["accuracy"]
        assert r["n"] == 3 and r["regenerated"] == 3
        assert r["accuracy"] == sum(row["correct"] for row in rows) / 3
        assert r["cut_off_frac"] == sum(row["cut_off"] for row in rows) / 3
        assert 0 <= r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] <= 1
        assert all(row["num_tokens"] <= 5 for row in rows)
    mmlu = [json.loads(x) for x in (out / "base" / "mmlu_stem.jsonl").read_text().splitlines()]
    assert mmlu[0]["gold"] == "C" and "\nAnswer Choices: (A) " in mmlu[0]["question"]
    # identical weights and settings: paired differences are exactly zero
    assert len(report["comparisons"]) == 7
    assert all(c["diff"] == 0 and c["mcnemar_p"] == 1.0 and c["ci95"] == [0.0, 0.0] for c in report["comparisons"])
    saved = json.loads((out / "report.json").read_text())
    assert saved["prompt"]["system"].startswith("Please reason step by step, and put your final answer")
    assert "<<QUESTION>>" in saved["prompt"]["templates"]["base"]["example"]
    assert saved["generation"]["max_new_tokens"]["gsm8k"] == 5 and saved["generation"]["do_sample"] is False
    assert saved["models"]["base"]["spec"]["name_or_path"] == tiny_dirs["base"]
    assert saved["summary"]["base"]["gsm8k"] == report["summary"]["base"]["gsm8k"]
    md = (out / "report.md").read_text()
    assert "| base | gsm8k | 3 |" in md and "Paired comparisons" in md

    # resume: nothing is regenerated
    calls = generate_calls
    calls.clear()
    again = ev.evaluate(models, _benches(data_dir), _cfg(), out, progress=False)
    assert calls == []
    assert [r["accuracy"] for r in again["results"]] == [r["accuracy"] for r in report["results"]]
    assert all(r["regenerated"] == 0 for r in again["results"])

    # records written before the flexible score: re-scored from their text, the file rewritten, nothing regenerated
    f = out / "base" / "gsm8k.jsonl"
    new_rows = [json.loads(x) for x in f.read_text().splitlines()]
    old_rows = [{k: v for k, v in row.items() if k not in ("flexible", "format")} | {"correct": True} for row in new_rows]
    f.write_text("".join(json.dumps(row) + "\n" for row in old_rows))
    rescored = ev.evaluate(models, _benches(data_dir, ["gsm8k"]), _cfg(), out, progress=False)
    assert calls == [] and [json.loads(x) for x in f.read_text().splitlines()] == new_rows
    assert rescored["results"][0]["accuracy"] == report["results"][0]["accuracy"]
    assert {"diff_flexible", "format_share", "ci95_format_share"} <= set(rescored["comparisons"][0])

    # an interrupted write (truncated last line) regenerates exactly that problem
    f = out / "same" / "svamp.jsonl"
    text = f.read_text()
    f.write_text(text[: len(text) - 20])
    third = ev.evaluate(models, _benches(data_dir, ["svamp"]), _cfg(), out, progress=False)
    assert calls == [1]
    assert {r["model"]: r["regenerated"] for r in third["results"]} == {"base": 0, "same": 1}
    assert [json.loads(x)["id"] for x in f.read_text().splitlines()] == [f"svamp/test/{i}" for i in range(3)]

    # resuming under different generation settings is refused
    with pytest.raises(ValueError, match="different settings.*max_new_tokens"):
        ev.evaluate(models, _benches(data_dir, ["svamp"]), _cfg(max_new_tokens=6), out, progress=False)


def test_shared_store_evaluates_an_identical_setting_once(tiny_dirs, data_dir, tmp_path, generate_calls, monkeypatch):
    """eval.cache: a second run (another out_dir) with the same model files and settings reuses the
    first run's rows without loading an engine; another budget, or cache false, generates."""
    calls = generate_calls
    models = [{"name": "base", "ref": tiny_dirs["base"]}]
    store = tmp_path / "store"
    first = ev.evaluate(models, _benches(data_dir, ["gsm8k"]), _cfg(), tmp_path / "run1", progress=False, cache_dir=store)
    assert calls == [3]
    # the plan names the run's records file and the store's key
    plan = ev.plan_evaluation(models, _benches(data_dir, ["gsm8k"]), _cfg(), tmp_path / "run1", None, store)
    (run,) = ev.plan_model(plan, models[0]).runs
    assert run.path == tmp_path / "run1" / "base" / "gsm8k.jsonl" and results.SharedResults.key_dir(store, run.settings).is_dir()
    # another run, another display name for the same weights, one more problem: only that one is generated
    renamed = [{"name": "expert", "ref": tiny_dirs["base"]}]
    second = ev.evaluate(renamed, _benches(data_dir, ["gsm8k"]), _cfg(max_problems=4), tmp_path / "run2", progress=False, cache_dir=store)
    assert calls == [3, 1]
    (r,) = second["results"]
    assert (r["reused"], r["regenerated"]) == (3, 1)
    rows1 = (tmp_path / "run1" / "base" / "gsm8k.jsonl").read_text().splitlines()
    rows2 = (tmp_path / "run2" / "expert" / "gsm8k.jsonl").read_text().splitlines()
    assert rows2[:3] == rows1 and len(rows2) == 4
    assert first["results"][0]["accuracy"] == sum(json.loads(x)["correct"] for x in rows1) / 3
    # the store now holds 4 rows, each once: a third run generates nothing and loads no engine
    build = HFEngine.__init__
    monkeypatch.setattr(HFEngine, "__init__", lambda *a, **k: pytest.fail("no engine should be built"))
    third = ev.evaluate(models, _benches(data_dir, ["gsm8k"]), _cfg(max_problems=4), tmp_path / "run3", progress=False, cache_dir=store)
    assert third["results"][0]["reused"] == 4 and calls == [3, 1]
    monkeypatch.setattr(HFEngine, "__init__", build)
    # another token budget is another setting; cache false ignores the store
    ev.evaluate(models, _benches(data_dir, ["gsm8k"]), _cfg(max_new_tokens=6), tmp_path / "run4", progress=False, cache_dir=store)
    ev.evaluate(models, _benches(data_dir, ["gsm8k"]), _cfg(cache=False), tmp_path / "run5", progress=False, cache_dir=store)
    assert calls == [3, 1, 3, 3]
    assert len(list(store.iterdir())) == 2
    with pytest.raises(ValueError, match="eval.cache: expected true or false"):
        ev.EvalSettings.from_cfg(_cfg(cache="yes"))


def test_paired_comparison_refuses_mismatched_settings(tiny_dirs, data_dir, tmp_path):
    models = [{"name": "base", "ref": tiny_dirs["base"]}, {"name": "other", "ref": tiny_dirs["other_template"]}]
    report = ev.evaluate(models, _benches(data_dir, ["gsm8k"]), _cfg(max_problems=2), tmp_path, progress=False)
    (comp,) = report["comparisons"]
    assert "refused" in comp and "template_fingerprint" in comp["refused"]
    assert "refused" in (tmp_path / "report.md").read_text()

    run = lambda model, mnt, correct: {  # noqa: E731
        "model": model,
        "settings": {"benchmark": "b", "max_new_tokens": mnt, "system_prompt": "s"},
        "rows": [{"id": str(i), "question": "q", "correct": c} for i, c in enumerate(correct)],
    }
    with pytest.raises(ValueError, match="refused.*max_new_tokens"):
        stats.paired_comparison(run("a", 512, [1, 0]), run("b", 256, [1, 1]))
    ok = stats.paired_comparison(run("a", 512, [1, 0, 0, 1]), run("b", 512, [1, 1, 1, 1]))
    assert ok["diff"] == 0.5 and ok["only_model_correct"] == 2 and ok["only_baseline_correct"] == 0
    assert ok["mcnemar_p"] == 0.5


def test_statistics_against_hand_values():
    lo, hi = stats.wilson_interval(8, 10)
    assert math.isclose(lo, 0.4901624, abs_tol=1e-6) and math.isclose(hi, 0.9433178, abs_tol=1e-6)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    assert stats.mcnemar_exact_p(1, 9) == 2 * 11 / 1024
    assert stats.mcnemar_exact_p(0, 0) == 1.0 and stats.mcnemar_exact_p(5, 5) == 1.0
    assert stats.mcnemar_exact_p(0, 3000) < 1e-300
    rng = np.random.default_rng(1)
    a = rng.random(400) < 0.5
    b = a.copy()
    b[rng.choice(400, 40, replace=False)] = True
    lo, hi = stats.paired_bootstrap_ci(a, b)
    diff = b.mean() - a.mean()
    assert lo < diff < hi and 0 < lo and hi < 0.2
    assert stats.paired_bootstrap_ci(a, b) == (lo, hi)  # fixed seed


def test_lora_adapter_directory(tiny_dirs, data_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from lightreasoner.models.spec import load_model, load_tokenizer

    spec = ModelSpec(name_or_path=tiny_dirs["base"])
    torch.manual_seed(0)
    peft_model = get_peft_model(load_model(spec), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    load_tokenizer(spec).save_pretrained(adapter)  # as distill.save_adapter writes it
    (adapter / "lightreasoner.json").write_text(json.dumps({"kind": "lora_adapter", "base": spec.to_dict(), "sample_key": "test"}))

    report = ev.evaluate([{"name": "tuned", "ref": str(adapter)}], _benches(data_dir, ["gsm8k"]), _cfg(max_problems=2), tmp_path / "eval", progress=False)
    assert report["models"]["tuned"]["kind"] == "lora_adapter"
    assert report["models"]["tuned"]["base"]["name_or_path"] == tiny_dirs["base"]
    rows = [json.loads(x) for x in (tmp_path / "eval" / "tuned" / "gsm8k.jsonl").read_text().splitlines()]

    tok = load_tokenizer(spec)
    direct = PeftModel.from_pretrained(load_model(spec), str(adapter)).eval()
    from lightreasoner.data.prompts import EVAL_SYSTEM

    prompts = encode_prompts(tok, [r["question"] for r in rows], EVAL_SYSTEM)
    expect = HFEngine(direct, tok).generate(prompts, GenerationSettings(5), 2, progress=False)
    base_out = HFEngine(load_model(spec), tok).generate(prompts, GenerationSettings(5), 2, progress=False)
    assert [r["generated"] for r in rows] == [e.text for e in expect]
    assert [e.token_ids for e in expect] != [b.token_ids for b in base_out]  # the adapter is really applied


def test_model_references_their_records_identities_and_engines(tiny_dirs, tmp_path):
    """Each kind of reference: its JSON form in the report (keys in this order), the identity the
    shared store's key is computed from, the engine in its record, the base it was trained from."""
    from peft import LoraConfig, get_peft_model

    from lightreasoner.models.spec import load_model
    from lightreasoner.training.checkpoints import merge_adapter, save_adapter
    from lightreasoner.training.reference import AdapterRef, ContrastivePair, MergedRef, SpecRef, resolve_model_ref

    spec = ModelSpec(name_or_path=tiny_dirs["base"])
    adapter = save_adapter(get_peft_model(load_model(spec), LoraConfig(r=2, target_modules=["q_proj"])), tmp_path / "adapter", spec, "k")
    merged = merge_adapter(adapter, tmp_path / "merged")
    other = ModelSpec(name_or_path=tiny_dirs["other_template"])
    configured = {"engine": "vllm", "dtype": "bfloat16"}

    ref = resolve_model_ref(spec.to_dict())
    assert isinstance(ref, SpecRef) and resolve_model_ref(tiny_dirs["base"]) == ref and ref.base is None
    assert list(ref.to_dict().items()) == [("kind", "spec"), ("spec", spec.to_dict()), ("base", None), ("path", None)]
    assert ref.identity() == spec.identity() and ref.engine_key(None) == {"engine": "hf", "dtype": "the model's"}
    assert ref.engine_key(configured) == configured
    assert resolve_model_ref("owner/model").to_dict()["spec"]["name_or_path"] == "owner/model"  # a hub name, read nowhere

    ref = resolve_model_ref(str(adapter))
    assert isinstance(ref, AdapterRef) and ref.base == spec
    assert list(ref.to_dict().items()) == [("kind", "lora_adapter"), ("spec", None), ("base", spec.to_dict()), ("path", str(adapter.resolve()))]
    assert ref.identity() == {"adapter": ModelSpec(name_or_path=str(adapter)).identity(), "base": spec.identity()}
    assert ref.load_tokenizer("tuned").get_vocab() == SpecRef(spec).load_tokenizer("base").get_vocab()  # the adapter's copy
    with pytest.raises(ValueError, match=r"^tuned: generation=vllm evaluates whole checkpoints, not a LoRA adapter; evaluate the merged"):
        ref.load_engine("tuned", None, {"_target_": "lightreasoner.generation.vllm.VLLMEngine"})

    ref = resolve_model_ref(str(merged))
    as_spec = ModelSpec(name_or_path=str(merged.resolve()), dtype=spec.dtype, device=spec.device)
    assert isinstance(ref, MergedRef) and ref.base == spec and ref.spec == as_spec and ref.identity() == as_spec.identity()
    assert list(ref.to_dict()) == ["kind", "spec", "base", "path"] and ref.to_dict()["kind"] == "merged"

    pair = ContrastivePair(spec, other, 0.1)
    assert resolve_model_ref(pair) is pair and pair.base is None
    assert list(pair.to_dict().items()) == [("kind", "contrastive_decoding"), ("spec", spec.to_dict()), ("amateur", other.to_dict()),
                                            ("alpha", 0.1), ("base", None), ("path", None)]
    assert pair.identity() == {"expert": spec.identity(), "amateur": other.identity(), "alpha": 0.1}
    assert pair.engine_key(configured) == {"engine": "contrastive_decoding", "alpha": 0.1}


def test_log_report(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    report = {
        "results": [{"model": "base", "benchmark": "gsm8k", "n": 3, "accuracy": 1 / 3, "ci95": [0.06, 0.79], "cut_off_frac": 1.0,
                     "tokens_per_s": 10.0, "gen_s": 1.0, "wall_s": 1.5}],
        "comparisons": [{"benchmark": "gsm8k", "model": "tuned", "baseline": "base", "n": 3, "diff": 0.25, "ci95": [0.0, 0.5], "mcnemar_p": 0.5}],
    }
    csv = CSVLogger(tmp_path, name="logs")
    tables.log_report(report, csv)
    text = Path(csv.log_dir, "metrics.csv").read_text()
    assert "eval/base/gsm8k/accuracy" in text and "eval/tuned/gsm8k/diff_vs_base" in text

    class FakeWandb(WandbLogger):
        def __init__(self):
            self.tables = []

        def log_table(self, key, columns=None, data=None, **kw):
            self.tables.append((key, columns, data))

    w = FakeWandb()
    tables.log_report(report, w)
    assert [t[0] for t in w.tables] == ["eval/results", "eval/paired_comparisons"]
    assert w.tables[0][2][0][:4] == ["base", "gsm8k", "3", "33.3"]


def test_read_rows_tolerates_only_a_truncated_last_line(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text('{"id": "a"}\n{"id": "b"}')  # complete last row, newline not yet written
    assert list(results.read_rows(f)) == ["a", "b"]
    assert f.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    f.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "gen')
    assert list(results.read_rows(f)) == ["a", "b"]
    assert f.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    f.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: malformed JSON"):
        results.read_rows(f)


def test_a_gzipped_record_file_reads_as_the_plain_one(tmp_path):
    """Committed records are ``{benchmark}.jsonl.gz``: read through gzip, row for row the plain
    file's; a truncated last line is dropped without touching the compressed file."""
    import gzip

    rows = [{"id": f"gsm8k/test/{i}", "generated": f"out {i} \u00e9", "correct": i % 2 == 0} for i in range(5)]
    plain = tmp_path / "gsm8k.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    packed = tmp_path / "gsm8k.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert results.read_rows(packed) == results.read_rows(plain) and len(results.read_rows(packed)) == 5
    assert results.record_path(tmp_path, "gsm8k") == plain  # the plain file first (a run still writing it)
    assert results.record_benchmarks(tmp_path) == ["gsm8k"]
    plain.unlink()
    assert results.record_path(tmp_path, "gsm8k") == packed and results.record_benchmarks(tmp_path) == ["gsm8k"]
    assert results.record_path(tmp_path, "svamp") == tmp_path / "svamp.jsonl"  # neither: the plain name
    cut = gzip.compress(b'{"id": "a"}\n{"id": "b", "gen')
    packed.write_bytes(cut)
    assert list(results.read_rows(packed)) == ["a"] and packed.read_bytes() == cut
