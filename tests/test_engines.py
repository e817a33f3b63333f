"""Generation engines behind one interface: the same records whatever the engine, the engine in
the cache key, the scoring pass always in full precision, a missing optional engine one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _tiny_pair import build_pair, problems

from lightreasoner.generation import GenerationSettings, HFEngine, build_engine, engine_class, engine_key
from lightreasoner.models.spec import ModelSpec
from lightreasoner.data.records import SCORED_TRACE_KEYS
from lightreasoner.sampling.sampler import run_sampling
from lightreasoner.models.tiny import build_char_tokenizer

REPO = Path(__file__).resolve().parents[1]
HF = {"_target_": "lightreasoner.generation.hf.HFEngine", "dtype": None}
BF16 = {"_target_": "lightreasoner.generation.hf.HFEngine", "dtype": "bfloat16"}
VLLM = {"_target_": "lightreasoner.generation.vllm.VLLMEngine", "dtype": "bfloat16"}
SETTINGS = {"max_new_tokens": 10, "batch_size": 4, "alpha_min": 0.05}


class NoLogitsEngine(HFEngine):
    """Full precision, but returns no logits (as vLLM): sampling must score with its own pass."""

    name = "hf_no_logits"
    full_precision_logits = False

    @classmethod
    def key_identity(cls, **_):
        return {"engine": cls.name}


@pytest.fixture(scope="module")
def pair():
    return build_pair()


def _sample(pair, tmp_path, generation):
    tok, expert, amateur = pair
    cache = run_sampling(ModelSpec("tiny-expert"), ModelSpec("tiny-amateur"), problems(5), {"name": "toy"}, SETTINGS, tmp_path,
                         trainer_kwargs={"accelerator": "cpu", "devices": 1}, models=(expert, amateur, tok), generation=generation)
    return cache, cache.read_all()


def test_an_engine_without_logits_gets_the_same_scores_from_the_teacher_forced_pass(pair, tmp_path):
    base, recs = _sample(pair, tmp_path / "a", None)
    other, recs2 = _sample(pair, tmp_path / "b", {"_target_": f"{__name__}.NoLogitsEngine"})
    assert base.key != other.key and other.fields["engine"] == {"engine": "hf_no_logits"}
    assert "engine" not in base.fields  # transformers at the model's precision: the key of old caches
    for a, b in zip(recs, recs2):
        assert set(a) == set(b) == set(SCORED_TRACE_KEYS)
        assert torch.equal(a["trace_ids"], b["trace_ids"]) and torch.equal(a["cand_ids"], b["cand_ids"])
        torch.testing.assert_close(a["kl"], b["kl"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a["cand_logp_e"], b["cand_logp_e"], atol=1e-5, rtol=1e-5)


def test_bf16_engine_generates_with_a_copy_and_sampling_scores_in_fp32(pair, tmp_path):
    tok, expert, _ = pair
    engine = build_engine(BF16, expert, tok)
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    assert next(expert.parameters()).dtype == torch.float32  # the scoring model is untouched
    out = engine.generate_batch([[5, 6, 7]], GenerationSettings(4), return_logits=True)
    assert out.logits is None and out.tokens.shape == (1, 4)
    cache, recs = _sample(pair, tmp_path, BF16)
    assert cache.fields["engine"]["dtype"] == "bfloat16"
    assert all(r["kl"].dtype == torch.float32 and r["cand_logp_e"].dtype == torch.float32 for r in recs)
    assert engine_key(HF) is None and engine_key(BF16)["dtype"] == "bfloat16"


def test_missing_optional_engine_is_one_line_naming_the_extra(tiny_pair_dirs, tmp_path):
    pytest.importorskip("lightreasoner")
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r'pip install -e "\.\[vllm\]"'):
        engine_key(VLLM)
    assert engine_class(VLLM).loads_own_weights
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "experiment=coder_cpu", "generation=vllm", "stage=sample",
         f"model_pair.expert.name_or_path={tiny_pair_dirs['expert']}", "model_pair.expert.gguf_file=null",
         f"model_pair.amateur.name_or_path={tiny_pair_dirs['amateur']}", "model_pair.amateur.gguf_file=null",
         f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "dataset.max_problems=2"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "vllm" in lines[0] and "pip install" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "cache" / "traces").exists() or not any((tmp_path / "cache" / "traces").rglob("*.pt"))


def test_evaluation_records_name_the_engine_and_keep_their_format(tiny_pair_dirs, data_dir, tmp_path):
    import json

    from lightreasoner.data.benchmarks import dataset_config
    from lightreasoner.eval.evaluate import evaluate

    models = [{"name": "base", "ref": ModelSpec(tiny_pair_dirs["expert"], device="cpu").to_dict()}]
    cfg = {"batch_size": 2, "max_problems": 2, "max_new_tokens": 4}
    rep_hf = evaluate(models, [dataset_config("gsm8k", data_dir)], cfg, tmp_path / "hf", progress=False)
    rep_bf = evaluate(models, [dataset_config("gsm8k", data_dir)], cfg, tmp_path / "bf16", progress=False, generation=BF16)
    hf_rows = [json.loads(x) for x in (tmp_path / "hf" / "base" / "gsm8k.jsonl").read_text().splitlines()]
    bf_rows = [json.loads(x) for x in (tmp_path / "bf16" / "base" / "gsm8k.jsonl").read_text().splitlines()]
    assert [set(r) for r in hf_rows] == [set(r) for r in bf_rows]
    assert json.loads((tmp_path / "bf16" / "base" / "gsm8k.settings.json").read_text())["engine"]["dtype"] == "bfloat16"
    assert rep_bf["models"]["base"]["engine"]["dtype"] == "bfloat16" and rep_hf["models"]["base"]["engine"]["engine"] == "hf"


def test_vllm_dtype_auto_resolves_by_hardware_before_any_key(monkeypatch):
    """generation.dtype=auto: bf16 only where it is native; keys and records hold the resolved name."""
    from lightreasoner.generation import vllm as vllm_engine

    assert vllm_engine.resolve_dtype("float32") == "float32"
    assert vllm_engine.resolve_dtype("bfloat16") == "bfloat16"
    monkeypatch.setattr(vllm_engine, "native_bf16", lambda: True)
    assert vllm_engine.resolve_dtype("auto") == "bfloat16"
    monkeypatch.setattr(vllm_engine, "native_bf16", lambda: False)
    assert vllm_engine.resolve_dtype("auto") == "float32"
    monkeypatch.setattr(vllm_engine, "_import_vllm", lambda: type("V", (), {"__version__": "0.0-test"}))
    assert vllm_engine.VLLMEngine.key_identity(dtype="auto") == {"engine": "vllm", "version": "0.0-test", "dtype": "float32"}
    monkeypatch.undo()
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    if not torch.cuda.is_available():
        assert vllm_engine.native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


class _FakeVLLM:
    """Stands in for the vllm module: records how the engine builds ``LLM`` and seeds requests;
    a request's one generated token is its seed mod 97 + 1 (so equal seeds give equal samples)."""

    __version__ = "0.0-test"
    built: list[dict] = []

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            _FakeVLLM.built.append(kw)

        def generate(self, prompts, params, use_tqdm=False):
            params = params if isinstance(params, list) else [params] * len(prompts)
            return [
                SimpleNamespace(outputs=[SimpleNamespace(token_ids=[(p.seed or 0) % 97 + 1], finish_reason="length", stop_reason=None)])
                for p in params
            ]


def test_vllm_sampling_seeds_each_row_and_builds_unchunked_on_cpu(monkeypatch, tiny_pair_dirs):
    """k copies of a prompt must not share a seed (vLLM seeds per request), the seeds are a pure
    function of the batch seed (resume draws the same), and on a CPU seeded sampling builds the
    engine with chunked prefill off (vLLM 0.32's CPU generator has no offset to rewind);
    greedy generation builds it as vLLM's default."""
    from lightreasoner.generation import vllm as vllm_engine

    monkeypatch.setattr(vllm_engine, "_import_vllm", lambda: _FakeVLLM)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _FakeVLLM.built = []
    tok = build_char_tokenizer()
    sampled = GenerationSettings(4, do_sample=True, temperature=0.7, top_p=0.95)
    greedy = GenerationSettings(4)
    engine = vllm_engine.VLLMEngine(tokenizer=tok, spec=tiny_pair_dirs["expert"], dtype="float32", max_model_len=512, eos_token_ids=[0])
    assert _FakeVLLM.built == []  # built by the first batch
    engine.generate_batch([[5, 6]] * 3, greedy)
    assert len(_FakeVLLM.built) == 1 and "enable_chunked_prefill" not in _FakeVLLM.built[0]
    a = engine.generate_batch([[5, 6]] * 4, sampled, seed=123).tokens[:, 0].tolist()
    assert len(_FakeVLLM.built) == 2  # rebuilt once for seeded sampling
    assert _FakeVLLM.built[1]["enable_chunked_prefill"] is False and _FakeVLLM.built[1]["max_num_batched_tokens"] >= 512
    b = engine.generate_batch([[5, 6]] * 4, sampled, seed=123).tokens[:, 0].tolist()
    c = engine.generate_batch([[5, 6]] * 4, sampled, seed=124).tokens[:, 0].tolist()
    assert len(_FakeVLLM.built) == 2 and a == b and a != c
    assert len(set(vllm_engine.row_seeds(123, 4))) == 4 and vllm_engine.row_seeds(123, 4) == vllm_engine.row_seeds(123, 6)[:4]
    assert len(set(a)) > 1  # the copies of one prompt drew different samples
    engine.generate_batch([[5, 6]], greedy)
    assert len(_FakeVLLM.built) == 2  # an unchunked engine serves greedy batches as well
