"""The default demo pair shipped as package data (lightreasoner/demo/shipped): its key is the
default config's, its files are hash-checked, it installs into an empty cache without training,
and any other config still builds locally. No training here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import lightreasoner.core.config  # noqa: F401  (registers the resolvers)
import lightreasoner.demo.pair as P
from lightreasoner.demo import ship
from lightreasoner.demo.pair import DemoConfig, MemberConfig, prepare_demo

REPO = Path(__file__).resolve().parents[1]


def _no_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the shipped pair should have been installed, not built")

    monkeypatch.setattr(P, "build_pair", boom)


def _fake_build(monkeypatch) -> list:
    calls = []

    def fake(cfg, out):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text("{}")
        calls.append(cfg.key())
        return {"build_seconds": 0.0}

    monkeypatch.setattr(P, "build_pair", fake)
    monkeypatch.setattr(P, "install_shipped", lambda *a, **k: pytest.fail("a non-default config used the shipped pair"))
    return calls


def test_shipped_key_is_the_default_config():
    man = json.loads((P.SHIPPED_DIR / "manifest.json").read_text())
    assert P.shipped_key() == man["key"] == DemoConfig().key()
    assert man["config"] == DemoConfig().key_dict()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["run_name=shipped-key-test"])
    composed = DemoConfig.from_any(cfg.demo)
    assert composed.use_shipped is True
    assert composed.key() == man["key"]
    # use_shipped is not part of the key
    assert DemoConfig(use_shipped=False).key() == man["key"]
    # the record covers every shipped file and the (regenerated, not shipped) data splits
    sums = P.read_sums(P.SHIPPED_DIR)
    shipped = {p.relative_to(P.SHIPPED_DIR).as_posix() for p in P.SHIPPED_DIR.rglob("*")
               if p.is_file() and p.name != P.SUMS_FILE and "__pycache__" not in p.parts}
    assert shipped == {r for r in sums if not r.startswith("data/")}
    assert {r for r in sums if r.startswith("data/")} == {f"data/{s}.jsonl" for s in ("train", "validation", "test")}
    assert not (P.SHIPPED_DIR / "data").exists()
    P.verify_shipped()  # the committed files match their record
    assert sum((P.SHIPPED_DIR / r).stat().st_size for r in shipped) < 5e6


def test_corrupted_shipped_file_is_one_value_error(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    copy = tmp_path / "shipped"
    shutil.copytree(P.SHIPPED_DIR, copy)
    weights = copy / "expert" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01
    weights.write_bytes(bytes(blob))
    monkeypatch.setattr(P, "SHIPPED_DIR", copy)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"expert/model\.safetensors") as err:
        prepare_demo(DemoConfig(progress=False), cache)
    assert "\n" not in str(err.value) and "sha256" in str(err.value)
    # nothing half-installed is left in the cache
    assert [p.name for p in (cache / "demo").iterdir() if not p.name.endswith(".lock")] == []

    (copy / "amateur" / "config.json").unlink()
    with pytest.raises(ValueError, match=r"amateur/config\.json.*missing"):
        P.verify_shipped(copy)


def test_install_into_an_empty_cache(tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    _no_training(monkeypatch)
    cache = tmp_path / "cache"
    dirs = prepare_demo(DemoConfig(progress=False), cache)
    root = P.demo_root(DemoConfig(), cache)
    assert dirs == P._dirs(root)
    assert set(dirs) == {"expert_dir", "amateur_dir", "data_dir", "manifest"}
    out = capsys.readouterr().out
    assert "used the shipped pair" in out and "validation accuracy expert" in out
    # only the finished directory and its lock
    assert sorted(p.name for p in root.parent.iterdir()) == sorted([root.name, root.name + ".lock"])

    man = P.load_manifest(dirs)
    assert man == json.loads((P.SHIPPED_DIR / "manifest.json").read_text())
    for split, n in man["split_sizes"].items():
        assert sum(1 for _ in open(Path(dirs["data_dir"]) / f"{split}.jsonl")) == n
    for name in ("expert", "amateur"):
        model = AutoModelForCausalLM.from_pretrained(dirs[f"{name}_dir"])
        assert sum(p.numel() for p in model.parameters()) == man["members"][name]["params"]
    assert prepare_demo(DemoConfig(progress=False), cache) == dirs  # cached now

    # the check command's comparison: an installed copy is bit-identical to the shipped pair ...
    ok, line = ship.compare(P.SHIPPED_DIR, root)
    assert ok and "bit-identical" in line and "\n" not in line
    # ... and a perturbed weight is reported with its size
    from safetensors.torch import load_file, save_file

    path = root / "amateur" / "model.safetensors"
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 0.5
    save_file(tensors, str(path), metadata={"format": "pt"})
    ok, line = ship.compare(P.SHIPPED_DIR, root)
    assert not ok and "outside tolerance" in line and "max abs weight diff 0.5" in line


def test_other_configs_build_locally(tmp_path, monkeypatch):
    calls = _fake_build(monkeypatch)
    other = DemoConfig(expert=MemberConfig(seed=1), progress=False)
    assert other.key() != P.shipped_key()
    prepare_demo(other, tmp_path)
    assert calls == [other.key()]
    # the default config with the opt-out builds locally too
    prepare_demo(DemoConfig(progress=False, use_shipped=False), tmp_path / "optout")
    assert calls == [other.key(), DemoConfig().key()]
    # so does the default config when nothing is shipped
    monkeypatch.setattr(P, "SHIPPED_DIR", tmp_path / "nothing")
    prepare_demo(DemoConfig(progress=False), tmp_path / "none")
    assert calls[-1] == DemoConfig().key() and len(calls) == 3
