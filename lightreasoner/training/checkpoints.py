"""Checkpoints on disk: LoRA adapters and merged models.

An adapter or merged-model directory carries a ``lightreasoner.json`` (:data:`META_FILE`) with the
full base spec (a model reference naming one is resolved by :mod:`.reference`). Adapters are
saved with their base spec and sample key (:func:`save_adapter`), reloaded alone
(:func:`load_adapted_model`) and merged into a standalone full-precision model
(:func:`merge_adapter`); every directory is written into a temporary sibling and renamed into
place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from lightreasoner.models import spec as models
from lightreasoner.core.config import to_plain
from lightreasoner.core.files import atomic_dir, atomic_write_json
from lightreasoner.models.spec import ModelSpec

META_FILE = "lightreasoner.json"
"""The metadata file of an adapter or merged-model directory."""


def _lora_summary(peft_model) -> dict:
    c = peft_model.peft_config[peft_model.active_adapter]
    targets = c.target_modules
    targets = sorted(targets) if isinstance(targets, (set, list, tuple)) else targets
    return {"r": c.r, "alpha": c.lora_alpha, "dropout": c.lora_dropout, "target_modules": targets}


def read_meta(model_dir: str | Path) -> dict:
    """The ``lightreasoner.json`` of an adapter or merged-model directory."""
    p = Path(model_dir).expanduser() / META_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{model_dir}: no {META_FILE} (not an adapter or merged model saved by lightreasoner)")
    return json.loads(p.read_text())


def save_adapter(
    module_or_peft_model,
    out_dir: str | Path,
    base_spec: ModelSpec | Mapping | str,
    sample_key: str | None,
    extra: Mapping | None = None,
    tokenizer=None,
) -> Path:
    """Save the LoRA adapter, the base tokenizer and ``lightreasoner.json``, atomically.

    ``lightreasoner.json`` = ``{"kind": "lora_adapter", "base": <ModelSpec dict incl. gguf_file
    and dtype>, "sample_key": ..., "lora": {r, alpha, dropout, target_modules}, **extra}``.
    ``tokenizer`` defaults to the one ``base_spec`` names (pass it to skip re-loading).
    """
    from lightning.pytorch import LightningModule  # here, not at import: validation reads refs without Lightning

    peft_model = module_or_peft_model.model if isinstance(module_or_peft_model, LightningModule) else module_or_peft_model
    spec = ModelSpec.from_any(to_plain(base_spec))
    if tokenizer is None:
        tokenizer = models.load_tokenizer(spec, "expert")
    meta = {"kind": "lora_adapter", "base": spec.to_dict(), "sample_key": sample_key, "lora": _lora_summary(peft_model)}
    for k, v in dict(to_plain(extra) or {}).items():
        if k in meta:
            raise ValueError(f"save_adapter: extra key {k!r} would overwrite a reserved field")
        meta[k] = v

    def write(tmp: Path) -> None:
        peft_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / META_FILE, meta)

    return atomic_dir(Path(out_dir), write)


def _tokenizer_from_dir(model_dir: Path):
    return models.load_tokenizer(ModelSpec(name_or_path=str(model_dir)), "adapter", padding_side="left")


def load_adapted_model(adapter_dir: str | Path, device: str | None = None, merge: bool = False):
    """Rebuild the base from the saved spec and attach the adapter → ``(model, tokenizer)``.

    ``device`` overrides the spec's device; ``merge=True`` returns the merged plain model
    (GGUF bases are rebuilt plain first). A merged-model directory (``kind: merged``) is loaded
    at the base spec's dtype. The model is in eval mode; the tokenizer pads on the left (for generation).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = Path(adapter_dir).expanduser()
    meta = read_meta(adapter_dir)
    spec = ModelSpec.from_any(meta["base"])
    if device is not None:
        spec.device = device
    if meta.get("kind") == "merged":
        # stored in float32; run at the base spec's dtype, as the base model would be
        model = AutoModelForCausalLM.from_pretrained(adapter_dir, dtype=spec.torch_dtype)
        model.to(spec.resolved_device()).eval()
        return model, _tokenizer_from_dir(adapter_dir)
    if meta.get("kind") != "lora_adapter":
        raise ValueError(f"{adapter_dir}: {META_FILE} kind {meta.get('kind')!r} is not 'lora_adapter' or 'merged'")
    base = models.load_model(spec, "adapter base", plain=merge and bool(spec.gguf_file))
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    if merge:
        model = model.merge_and_unload()
    model.to(spec.resolved_device())
    model.eval()
    return model, _tokenizer_from_dir(adapter_dir)


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, device: str = "cpu") -> Path:
    """Merge an adapter into its base in full precision (float32) → a standalone model dir.

    The base is rebuilt from the saved spec (GGUF dequantized and rebuilt plain), the adapter
    merged (``merge_and_unload``), and the model, tokenizer and ``lightreasoner.json``
    (``{"kind": "merged", "base": ..., "adapter": {...}, "dtype": "float32"}``) written
    atomically. Load it with ``load_adapted_model(out_dir)`` or as a plain local ModelSpec.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir).expanduser()
    meta = read_meta(adapter_dir)
    if meta.get("kind") != "lora_adapter":
        raise ValueError(f"{adapter_dir}: {META_FILE} kind {meta.get('kind')!r} is not 'lora_adapter'")
    spec = ModelSpec.from_any(meta["base"])
    load_spec = ModelSpec.from_any({**spec.to_dict(), "device": device})
    base = models.load_model(load_spec, "adapter base", plain=True, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).merge_and_unload()
    merged.eval()
    tokenizer = _tokenizer_from_dir(adapter_dir)
    adapter_info = {k: v for k, v in meta.items() if k not in ("kind", "base")}
    adapter_info["path"] = str(adapter_dir.resolve())
    out_meta = {"kind": "merged", "base": spec.to_dict(), "adapter": adapter_info, "dtype": "float32"}

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        # the tokenizer files as the adapter holds them, byte for byte: a re-save records flags of
        # this process (HF_HUB_OFFLINE -> "local_files_only" in tokenizer_config.json), and a merged
        # model rebuilt from its adapter elsewhere must keep the identity its evaluation rows carry
        for saved in tokenizer.save_pretrained(tmp):
            src = adapter_dir / Path(saved).name
            if src.is_file() and Path(saved).parent == tmp:
                shutil.copyfile(src, saved)
        atomic_write_json(tmp / META_FILE, out_meta)

    return atomic_dir(Path(out_dir), write)
