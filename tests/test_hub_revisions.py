"""The paper presets' hub revisions are pinned; a malformed revision is a validation error naming
the key; a wrong or unreachable pin is one error line naming the model and the revision (issue 32)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import lightreasoner.core.config  # noqa: F401
from lightreasoner.models import spec as models
from lightreasoner.models.spec import ModelSpec, pair_specs, revision_ok

CONF = Path(__file__).resolve().parents[1] / "conf"
PINS = {
    "Qwen/Qwen2.5-Math-1.5B": "4a83ca6e4526a4f2da3aa259ec36c259f66b2ab2",
    "Qwen/Qwen2.5-Math-1.5B-Instruct": "aafeb0fc6f22cbf0eaeed126eff8be45b0360a35",
    "Qwen/Qwen2.5-Math-7B": "b101308fe89651ea5ce025f25317fea6fc07e96e",
    "Qwen/Qwen2.5-Math-7B-Instruct": "ef9926d75ab1d54532f6a30dd5e760355eb9aa4d",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": "ad9f0ae0864d7fbcd1cd905e3c6c5b069cc8b562",
    "Qwen/Qwen2.5-0.5B": "060db6499f32faf8b98477b0a26969ef7d8b9987",
    "Qwen/Qwen2.5-1.5B": "8faed761d45a263340a0528343f099c05c9a4323",
}
PAPER = sorted(p.stem for p in (CONF / "experiment").glob("paper_*.yaml"))


def _compose(overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize("experiment", PAPER)
def test_paper_presets_pin_both_models(experiment):
    expert, amateur = pair_specs(_compose([f"experiment={experiment}"]))
    for spec in (expert, amateur):
        assert spec.revision == PINS[spec.name_or_path]
        spec.check("model_pair.expert", paths=False)
        assert spec.identity()["revision"] == PINS[spec.name_or_path]


def test_the_amateur_sweep_swaps_name_and_revision_together():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=paper_qwen25_math_1.5b", "+sweep=amateurs"], return_hydra_config=True)
        value = cfg.hydra.sweeper.params["model_pair.amateur"]
        (override,) = OverridesParser.create().parse_overrides([f"model_pair.amateur={value}"])
        jobs = [compose("train", overrides=["experiment=paper_qwen25_math_1.5b", f"model_pair.amateur={v}"])
                for v in override.sweep_string_iterator()]
    amateurs = [pair_specs(job)[1] for job in jobs]
    assert [a.name_or_path for a in amateurs] == ["Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-Math-1.5B-Instruct"]
    assert all(a.revision == PINS[a.name_or_path] and a.dtype == "bfloat16" for a in amateurs)


@pytest.mark.parametrize("revision", ["4a83ca6e4526a4f2da3aa259ec36c259f66b2ab2", "main", "v1.0", "refs/pr/3", "release_2024-01"])
def test_well_formed_revisions(revision):
    assert revision_ok(revision)
    ModelSpec("Qwen/Qwen2.5-0.5B", revision=revision).check("model_pair.amateur", paths=False)


@pytest.mark.parametrize("revision", ["4a83ca6e", "4a83ca6e4526a4f2da3aa259ec36c259f66b2ab", "4a83ca6e4526a4f2da3aa259ec36c259f66b2ab2f",
                                      "main branch", "a..b", "feature/", "HEAD~1", ""])
def test_malformed_revision_is_a_validation_error_naming_the_key(revision):
    assert not revision_ok(revision)
    with pytest.raises(ValueError, match=r"^model_pair\.expert\.revision: expected a full 40-hex commit"):
        ModelSpec("Qwen/Qwen2.5-Math-1.5B", revision=revision).check("model_pair.expert", paths=False)


def test_pipeline_validation_names_the_key():
    from lightreasoner.run.validation import validate

    cfg = _compose(["experiment=paper_qwen25_math_1.5b", "model_pair.amateur.revision=060db649"])
    cfg.paths.output_dir = cfg.trainer.default_root_dir = "/tmp/lr-revision-test"  # no Hydra run here to fill them
    with pytest.raises(ValueError, match=r"model_pair\.amateur\.revision: .*'060db649'"):
        validate(cfg)


def _raise(exc):
    def from_pretrained(*args, **kwargs):
        raise exc

    return from_pretrained


@pytest.mark.parametrize("loader", ["tokenizer", "model"])
def test_a_wrong_or_unreachable_pin_is_one_line_naming_model_and_revision(monkeypatch, loader):
    import transformers

    spec = ModelSpec("Qwen/Qwen2.5-Math-1.5B", revision="0" * 40)
    err = OSError(f"{'0' * 40} is not a valid git identifier (branch name, tag name or commit id) that exists\n"
                  "for this model name. Check the model page at 'https://huggingface.co/Qwen/Qwen2.5-Math-1.5B'\n"
                  "for available revisions.")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _raise(err))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _raise(err))
    load = models.load_tokenizer if loader == "tokenizer" else models.load_model
    with pytest.raises(FileNotFoundError) as info:
        load(spec, "model_pair.expert")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("model_pair.expert: cannot load")
    assert f"'Qwen/Qwen2.5-Math-1.5B' at revision {'0' * 40}" in msg and "not a valid git identifier" in msg
    # the hub unreachable: the same one line
    unreachable = OSError("We couldn't connect to 'https://huggingface.co' to load the files,\nand couldn't find them in the cached files.")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _raise(unreachable))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _raise(unreachable))
    with pytest.raises(FileNotFoundError, match=r"^model_pair\.expert: cannot load .*at revision 0{40} \(We couldn't connect"):
        load(spec, "model_pair.expert")
