"""What kind of pair a run contrasts: the ``model_pair`` group's keys beside the two model specs.

- ``model_pair.alignment``: ``shared`` (one tokenizer, checked exactly; the published setting)
  or ``string`` (tokenizers that differ are aligned by token string and compared only at shared
  token boundaries, :mod:`lightreasoner.core.alignment`), with ``model_pair.min_coverage`` the floor
  under which such a pair fails.
- ``model_pair.amateur.kind``: ``model`` (a second model, the published setting),
  ``checkpoint`` (an earlier checkpoint of the expert: same architecture, a directory or a hub
  revision) or ``early_exit`` (no second model: the expert's hidden state after layer
  ``model_pair.amateur.layer`` through the expert's own final norm and LM head, the DoLa
  construction, :class:`EarlyExitLM`).

Defaults (``shared``, ``model``) are today's pairs exactly: nothing of them enters a cache key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lightreasoner.core.config import to_plain

ALIGNMENTS = ("shared", "string")
"""``model_pair.alignment`` values."""
AMATEUR_KINDS = ("model", "checkpoint", "early_exit")
"""``model_pair.amateur.kind`` values."""
AMATEUR_KEYS = ("kind", "layer")
"""Keys of ``model_pair.amateur`` that are not ``ModelSpec`` fields."""
ARCHITECTURE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
"""Config fields an earlier checkpoint of the expert must share with it."""


@dataclass(frozen=True)
class PairSettings:
    """The ``model_pair`` group's pair-level keys (see the module docstring)."""

    alignment: str = "shared"
    """``shared``: the pair must share one tokenizer (``models.check_pair_tokenizers``);
    ``string``: tokenizers that differ are aligned by token string (a pair that shares one is
    scored exactly as ``shared``). Part of the trace-cache key when not ``shared``."""
    min_coverage: float = 0.5
    """``alignment=string``: sampling fails when the fraction of steps scored, or the aligned
    fraction of the expert's candidate mass at kept steps, is below this; in [0, 1]."""
    amateur_kind: str = "model"
    """``model_pair.amateur.kind``: ``model``, ``checkpoint`` or ``early_exit``."""
    amateur_layer: int | None = None
    """``model_pair.amateur.layer``: ``early_exit`` only, the expert layer (0 = the embeddings,
    up to the expert's layer count minus one) whose hidden state is the amateur's."""

    @classmethod
    def from_cfg(cls, pair: Any) -> "PairSettings":
        """From a ``model_pair`` node (its ``expert`` / ``amateur`` specs are read elsewhere)."""
        d = to_plain(pair) or {}
        amateur = d.get("amateur") if isinstance(d.get("amateur"), Mapping) else {}
        settings = cls(
            alignment=d.get("alignment", "shared"),
            min_coverage=d.get("min_coverage", 0.5),
            amateur_kind=amateur.get("kind") or "model",
            amateur_layer=amateur.get("layer"),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """One ``ValueError`` naming the first invalid key."""
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"model_pair.alignment: expected one of {list(ALIGNMENTS)}, got {self.alignment!r}")
        m = self.min_coverage
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or not 0 <= m <= 1:
            raise ValueError(f"model_pair.min_coverage: expected a number in [0, 1], got {m!r}")
        if self.amateur_kind not in AMATEUR_KINDS:
            raise ValueError(f"model_pair.amateur.kind: expected one of {list(AMATEUR_KINDS)}, got {self.amateur_kind!r}")
        layer = self.amateur_layer
        if self.amateur_kind == "early_exit":
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ValueError(f"model_pair.amateur.layer: expected an integer >= 0 (the expert layer kind=early_exit reads), got {layer!r}")
        elif layer is not None:
            raise ValueError(f"model_pair.amateur.layer: expected null (only kind=early_exit reads a layer; kind is {self.amateur_kind!r}), got {layer!r}")

    @property
    def early_exit(self) -> bool:
        return self.amateur_kind == "early_exit"

    def key_fields(self) -> dict | None:
        """What the trace-cache key gains from the pair's kind: ``None`` for the defaults (so
        existing keys hold). A ``checkpoint`` amateur is a model like any other (its own identity
        is in the key), so only ``early_exit`` (whose amateur identity is the expert's) and a
        non-``shared`` alignment add fields."""
        d: dict[str, Any] = {}
        if self.alignment != "shared":
            d["alignment"] = self.alignment
        if self.early_exit:
            d["amateur"] = {"kind": "early_exit", "layer": int(self.amateur_layer)}
        return d or None

    def amateur_spec_fields(self, expert: Any, amateur: Any) -> dict | str:
        """The amateur's ``ModelSpec`` fields from the two spec nodes.

        ``early_exit``: the expert's own spec (there is no second model). ``checkpoint``: the
        amateur's node, whose ``name_or_path`` defaults to the expert's (then a ``revision``
        other than the expert's names the earlier checkpoint); naming the expert itself is an
        error.
        """
        expert = {"name_or_path": expert} if isinstance(expert, str) else dict(expert or {})
        if isinstance(amateur, str):
            amateur = {"name_or_path": amateur}
        fields = {k: v for k, v in dict(amateur or {}).items() if k not in AMATEUR_KEYS}
        if self.early_exit:
            return expert
        if self.amateur_kind == "checkpoint":
            if not fields.get("name_or_path") or fields.get("name_or_path") == "???":
                fields = {**expert, "revision": fields.get("revision"), **{k: v for k, v in fields.items() if v is not None}}
                fields["name_or_path"] = expert.get("name_or_path")
            same = all(fields.get(k) == expert.get(k) for k in ("name_or_path", "revision", "gguf_file"))
            if same:
                raise ValueError(
                    "model_pair.amateur: kind=checkpoint names the expert itself; give the earlier checkpoint's "
                    "name_or_path (a directory) or a revision other than the expert's"
                )
        return fields


def validate_pair(cfg: Any) -> PairSettings:
    """The run's :class:`PairSettings`, with the checks that span groups: an ``early_exit``
    amateur is no standalone model, so ``eval.models`` cannot evaluate ``amateur`` and no
    contrastive decoding can run with it."""
    settings = PairSettings.from_cfg(cfg.model_pair)
    if settings.early_exit:
        models = [str(m) for m in (cfg.get("eval") or {}).get("models", [])]
        method = str(((cfg.get("method") or {}).get("name")) or "")
        bad = [m for m in models if m in ("amateur", "contrastive_decoding")] + ([method] if method == "contrastive_decoding" else [])
        if bad:
            raise ValueError(
                f"model_pair.amateur.kind=early_exit: the amateur is a layer of the expert, not a model to evaluate or "
                f"decode with; drop {sorted(set(bad))} from eval.models / method"
            )
    return settings


# ----------------------------------------------------------------------------- the self-amateurs


def _decoder_layers(model) -> tuple[torch.nn.Module, str]:
    """The expert's decoder stack and the name of its layer list."""
    base = getattr(model, "base_model", None) or model
    for name in ("layers", "h"):
        if isinstance(getattr(base, name, None), torch.nn.ModuleList):
            return base, name
    raise ValueError(
        f"model_pair.amateur.kind=early_exit: cannot find the decoder layers of {type(model).__name__} "
        "(expected a ModuleList named 'layers' or 'h')"
    )


class EarlyExitLM(torch.nn.Module):
    """The expert cut after layer ``layer``: its hidden state there through the expert's own final
    norm and LM head (DoLa's premature layer), as a causal LM with the expert's interface.

    The forward pass runs only the first ``layer`` decoder layers (the expert's layer list is
    narrowed for the call and restored after it), so scoring a trace costs ``layer / L`` of an
    expert forward and no second model is loaded. Use without a KV cache (``use_cache=False``).
    """

    def __init__(self, expert: torch.nn.Module, layer: int) -> None:
        super().__init__()
        self.expert = expert
        self.layer = int(layer)
        decoder, name = _decoder_layers(expert)
        n = len(getattr(decoder, name))
        if not 0 <= self.layer < n:
            raise ValueError(f"model_pair.amateur.layer: expected 0 <= layer < {n} (the expert's layer count), got {layer}")
        self.config = expert.config

    def get_input_embeddings(self):
        return self.expert.get_input_embeddings()

    def forward(self, *args, **kwargs):
        decoder, name = _decoder_layers(self.expert)
        layers = getattr(decoder, name)
        setattr(decoder, name, layers[: self.layer])
        try:
            return self.expert(*args, **{**kwargs, "use_cache": False})
        finally:
            setattr(decoder, name, layers)


def check_checkpoint_amateur(expert_model, amateur_model, expert_name: str = "expert", amateur_name: str = "amateur") -> None:
    """``kind=checkpoint``: the amateur must have the expert's architecture (one clear error)."""
    ce, ca = expert_model.config, amateur_model.config
    diff = [(f, getattr(ce, f, None), getattr(ca, f, None)) for f in ARCHITECTURE_FIELDS if getattr(ce, f, None) != getattr(ca, f, None)]
    if diff:
        what = ", ".join(f"{f} {b!r} vs the expert's {a!r}" for f, a, b in diff)
        raise ValueError(
            f"model_pair.amateur.kind=checkpoint: {amateur_name!r} is not a checkpoint of the expert {expert_name!r} ({what})"
        )
