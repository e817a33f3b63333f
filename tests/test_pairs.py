"""The model_pair group's pair keys: settings and their errors, cache-key fields (defaults leave
keys untouched), the specs they give, the early-exit self-amateur (DoLa construction, one model)
and the earlier-checkpoint amateur."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from lightreasoner.models import tiny
from lightreasoner.sampling import trace_cache as tc
from lightreasoner.models.spec import ModelSpec, pair_specs
from lightreasoner.models.pairs import EarlyExitLM, PairSettings, check_checkpoint_amateur, validate_pair
from lightreasoner.data.prompts import encode_prompts
from lightreasoner.sampling.sampler import ContrastiveSampler, SamplingSettings, make_batch, question_sha

from _tiny_pair import QUESTIONS, assert_matches_reference

SETTINGS = dict(max_new_tokens=6, alpha_min=0.1, max_candidates=12, vocab_chunk=4, system_prompt="Please reason step by step.")


@pytest.mark.parametrize(
    "node, key",
    [
        ({"alignment": "bytes"}, "model_pair.alignment"),
        ({"min_coverage": 1.5}, "model_pair.min_coverage"),
        ({"min_coverage": True}, "model_pair.min_coverage"),
        ({"amateur": {"kind": "layer"}}, "model_pair.amateur.kind"),
        ({"amateur": {"kind": "early_exit"}}, "model_pair.amateur.layer"),
        ({"amateur": {"kind": "early_exit", "layer": -1}}, "model_pair.amateur.layer"),
        ({"amateur": {"kind": "model", "layer": 2}}, "model_pair.amateur.layer"),
    ],
)
def test_bad_pair_settings_are_one_error_naming_the_key(node, key):
    with pytest.raises(ValueError, match=rf"^{key}: expected") as err:
        PairSettings.from_cfg(node)
    assert "\n" not in str(err.value)


def test_default_pair_leaves_every_cache_key_as_it_was():
    tok = tiny.build_char_tokenizer()
    s = SamplingSettings.from_cfg(SETTINGS)
    e, a, ds = ModelSpec("tiny/e"), ModelSpec("tiny/a"), {"name": "toy", "split": "train"}
    base = tc.trace_key(tc.trace_key_fields(e, a, ds, tok, s))
    assert PairSettings().key_fields() is None
    assert PairSettings(amateur_kind="checkpoint").key_fields() is None  # its own identity is the amateur's
    assert tc.trace_key(tc.trace_key_fields(e, a, ds, tok, s, pair=PairSettings().key_fields())) == base
    keys = {
        tc.trace_key(tc.trace_key_fields(e, a, ds, tok, s, pair=p.key_fields()))
        for p in (PairSettings(alignment="string"), PairSettings(amateur_kind="early_exit", amateur_layer=1),
                  PairSettings(amateur_kind="early_exit", amateur_layer=2))
    }
    assert len(keys) == 3 and base not in keys


def _cfg(amateur, **pair):
    return OmegaConf.create({"model_pair": {"name": "p", **pair, "expert": {"name_or_path": "org/expert", "revision": "v3"}, "amateur": amateur},
                             "eval": {"models": ["base", "tuned"]}, "method": {"name": "lightreasoner"}})


def test_pair_specs_for_each_amateur_kind():
    expert, amateur = pair_specs(_cfg({"kind": "model", "layer": None, "name_or_path": "org/small"}))
    assert (expert.name_or_path, amateur.name_or_path) == ("org/expert", "org/small")
    expert, amateur = pair_specs(_cfg({"kind": "early_exit", "layer": 2, "name_or_path": "ignored"}))
    assert amateur == expert  # no second model: the key's amateur identity is the expert's (plus the layer)
    _, amateur = pair_specs(_cfg({"kind": "checkpoint", "revision": "v1"}))
    assert (amateur.name_or_path, amateur.revision) == ("org/expert", "v1")
    with pytest.raises(ValueError, match="names the expert itself"):
        pair_specs(_cfg({"kind": "checkpoint", "revision": "v3"}))


def test_early_exit_cannot_be_evaluated_or_decoded_with():
    cfg = _cfg({"kind": "early_exit", "layer": 1})
    assert validate_pair(cfg).early_exit
    cfg.eval.models = ["base", "tuned", "amateur"]
    with pytest.raises(ValueError, match=r"model_pair.amateur.kind=early_exit: .* drop \['amateur'\]"):
        validate_pair(cfg)


@pytest.fixture(scope="module")
def expert():
    tok = tiny.build_char_tokenizer()
    model = tiny.build_tiny_model(tok, seed=5, num_layers=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return tok, model


@torch.no_grad()
def test_early_exit_is_the_hidden_state_at_layer_k_through_the_final_norm_and_head(expert):
    tok, model = expert
    x = torch.tensor([tok("What is 2+2? 4", add_special_tokens=False)["input_ids"]])
    full = model(x, output_hidden_states=True)
    n = model.config.num_hidden_layers
    for k in range(n):
        want = model.lm_head(model.model.norm(full.hidden_states[k]))
        torch.testing.assert_close(EarlyExitLM(model, k)(input_ids=x).logits, want, atol=1e-5, rtol=0)
    # the expert itself is untouched afterwards, and a layer beyond it is one clear error
    assert len(model.model.layers) == n
    torch.testing.assert_close(model(x).logits, full.logits)
    with pytest.raises(ValueError, match="model_pair.amateur.layer: expected 0 <= layer < 3"):
        EarlyExitLM(model, 3)


def test_early_exit_sampler_loads_one_model_and_matches_the_per_prefix_reference(expert):
    tok, model = expert
    qs = QUESTIONS[:3]
    batch = make_batch([f"toy/train/{i}" for i in range(3)], [question_sha(q) for q in qs], encode_prompts(tok, qs, SETTINGS["system_prompt"]))
    pair = PairSettings(amateur_kind="early_exit", amateur_layer=1)
    sampler = ContrastiveSampler(expert_model=model, tokenizer=tok, settings=SETTINGS, pair=pair)
    records = sampler.predict_step(batch)
    assert isinstance(sampler.amateur_model, EarlyExitLM) and sampler.amateur_model.expert is model
    for rec in records:
        assert_matches_reference(rec, model, EarlyExitLM(model, 1), tok, SETTINGS["alpha_min"], SETTINGS["max_candidates"], SETTINGS["max_new_tokens"])
    assert float(torch.cat([r["kl"] for r in records]).max()) > 0.05


def test_a_checkpoint_amateur_must_have_the_experts_architecture(expert):
    tok, model = expert
    earlier = tiny.build_tiny_model(tok, seed=9, num_layers=3)
    check_checkpoint_amateur(model, earlier)
    other = tiny.build_tiny_model(tok, seed=9, num_layers=2)
    with pytest.raises(ValueError, match=r"'small' is not a checkpoint of the expert 'big' \(num_hidden_layers 2 vs the expert's 3\)"):
        check_checkpoint_amateur(model, other, "big", "small")
    sampler = ContrastiveSampler(expert_model=model, amateur_model=other, tokenizer=tok, settings=SETTINGS, pair=PairSettings(amateur_kind="checkpoint"))
    with pytest.raises(ValueError, match="not a checkpoint of the expert"):
        sampler.setup_models()


def test_demo_keeps_earlier_expert_checkpoints_for_a_checkpoint_amateur(tmp_path):
    from pathlib import Path

    from lightreasoner.demo.pair import DemoConfig, demo_amateur_dir, load_manifest, prepare_demo
    from lightreasoner.models.spec import load_model

    raw = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "demo" / "default.yaml")
    tiny_cfg = {
        "task": {"seed": 3, "train_size": 48, "validation_size": 8, "test_size": 8},
        "expert": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "train_steps": 4, "batch_size": 16, "warmup_steps": 1},
        "amateur": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32, "train_steps": 2, "batch_size": 16, "warmup_steps": 1},
        "eval_problems": 8, "max_new_tokens": 8, "progress": False,
    }
    plain = DemoConfig.from_any(OmegaConf.merge(raw, tiny_cfg))
    assert "expert_checkpoints" not in plain.key_dict()  # the demo without checkpoints keeps its key
    cfg = DemoConfig.from_any(OmegaConf.merge(raw, tiny_cfg, {"expert_checkpoints": [2]}))
    assert cfg.key() != plain.key()
    with pytest.raises(ValueError, match=r"demo.expert_checkpoints: expected distinct training steps in \[1, 3\]"):
        DemoConfig.from_any(OmegaConf.merge(raw, tiny_cfg, {"expert_checkpoints": [4]}))
    dirs = prepare_demo(cfg, tmp_path)
    assert list(dirs["expert_checkpoints"]) == ["expert_step2"]
    assert load_manifest(dirs)["members"]["expert"]["checkpoints"]["2"]["validation"]["n"] == 8
    early = load_model(ModelSpec(dirs["expert_checkpoints"]["expert_step2"], device="cpu"))
    final = load_model(ModelSpec(dirs["expert_dir"], device="cpu"))
    check_checkpoint_amateur(final, early)
    assert not torch.equal(early.lm_head.weight, final.lm_head.weight)
    # the amateur directory each kind points at
    assert demo_amateur_dir({"kind": "checkpoint", "name_or_path": "expert_step2"}, dirs) == dirs["expert_checkpoints"]["expert_step2"]
    assert demo_amateur_dir({"kind": "early_exit", "layer": 1}, dirs) == dirs["expert_dir"]
    assert demo_amateur_dir({"kind": "model"}, dirs) == dirs["amateur_dir"]
    with pytest.raises(ValueError, match=r"expected one of the demo expert's checkpoints \['expert_step2'\]"):
        demo_amateur_dir({"kind": "checkpoint", "name_or_path": "expert_step3"}, dirs)


def test_early_exit_from_specs_loads_the_expert_only(tiny_pair_dirs, monkeypatch):
    import lightreasoner.sampling.sampler as sampling_mod

    loaded = []
    real = sampling_mod.load_model
    monkeypatch.setattr(sampling_mod, "load_model", lambda spec, what, **kw: loaded.append(what) or real(spec, what, **kw))
    spec = ModelSpec(tiny_pair_dirs["expert"], device="cpu")
    sampler = ContrastiveSampler(spec, spec, SETTINGS, pair=PairSettings(amateur_kind="early_exit", amateur_layer=1)).setup_models()
    assert loaded == ["model_pair.expert"]
    assert isinstance(sampler.amateur_model, EarlyExitLM) and sampler.amateur_model.expert is sampler.expert_model
