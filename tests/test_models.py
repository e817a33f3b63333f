"""Model specs and the pair's tokenizer check."""

from __future__ import annotations

import logging
import string

import pytest

from lightreasoner.models.spec import ModelSpec, check_pair_tokenizers, eos_token_ids, load_model, load_tokenizer
from lightreasoner.models.tiny import build_char_tokenizer


def test_spec_from_dict_rejects_unknown_fields_and_missing_path():
    spec = ModelSpec.from_any({"name_or_path": "Qwen/Qwen2.5-0.5B", "dtype": "bfloat16"})
    assert spec.identity() == {"dtype": "bfloat16", "hub": "Qwen/Qwen2.5-0.5B", "revision": "main"}
    with pytest.raises(ValueError, match="unknown field"):
        ModelSpec.from_any({"name_or_path": "x", "dtpye": "bf16"})
    with pytest.raises(ValueError, match="name_or_path"):
        ModelSpec.from_any({"dtype": "float32"})
    with pytest.raises(ValueError, match="dtype"):
        ModelSpec("x", dtype="float8").torch_dtype


def test_local_identity_changes_with_the_weights(tiny_pair_dirs, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_pair_dirs["expert"], d)
    before = ModelSpec(str(d)).identity()
    with open(d / "model.safetensors", "ab") as f:
        f.write(b"\0" * 8)
    assert ModelSpec(str(d)).identity() != before


def test_local_identity_is_the_content_not_the_file_date(tiny_pair_dirs, tmp_path, monkeypatch):
    """Same bytes -> same identity (a re-assembled or copied checkpoint keeps its caches); one
    changed byte in the middle of a same-size file -> a new identity (mtime is not relied on)."""
    import os
    import shutil

    monkeypatch.setenv("LIGHTREASONER_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "m"
    shutil.copytree(tiny_pair_dirs["expert"], d)
    before = ModelSpec(str(d)).identity()
    weights = d / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert ModelSpec(str(d)).identity() == before
    assert list((tmp_path / "cache" / "file_hashes").iterdir())  # the hash is memoised on disk
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime restored
    after = ModelSpec(str(d)).identity()
    assert after != before and len(data) == st.st_size


def test_unknown_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="expert.name_or_path"):
        load_tokenizer(ModelSpec(str(tmp_path / "missing")), "expert")
    with pytest.raises(FileNotFoundError, match="expert.gguf_file"):
        load_model(ModelSpec(str(tmp_path), gguf_file="nope.gguf"), "expert")


def test_pair_with_same_tokenizer_passes():
    check = check_pair_tokenizers(build_char_tokenizer(), build_char_tokenizer())
    assert check.differing_special == []


def test_mismatched_regular_vocabulary_is_one_error_naming_both_models():
    a = build_char_tokenizer()
    b = build_char_tokenizer(chars=string.ascii_letters.replace("a", "") + string.digits + " \n")
    with pytest.raises(ValueError, match=r"expert 'E/1'.*amateur 'A/2'"):
        check_pair_tokenizers(a, b, "E/1", "A/2")


def test_differing_special_tokens_only_warn(caplog):
    a = build_char_tokenizer()
    b = build_char_tokenizer()
    b.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<think>"]})
    with caplog.at_level(logging.WARNING, logger="lightreasoner.models.spec"):
        check = check_pair_tokenizers(a, b)
    assert [t for t, _, _ in check.differing_special] == ["<think>"]
    assert "<think>" in caplog.text


def test_eos_ids_union_tokenizer_and_generation_config(tiny_pair_dirs):
    spec = ModelSpec(tiny_pair_dirs["expert"], device="cpu")
    tok, model = load_tokenizer(spec), load_model(spec)
    model.generation_config.eos_token_id = [tok.eos_token_id, 0]
    assert eos_token_ids(tok, model) == sorted({tok.eos_token_id, 0})
