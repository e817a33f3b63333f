"""Model references: what an evaluated model is, typed.

An ``eval.models`` entry's ``ref`` (``tuned=...``) names one of four things, each a frozen
:class:`ModelRef`: a checkpoint (:class:`SpecRef`: a ``ModelSpec``, a plain local directory or a
hub name), a LoRA adapter directory (:class:`AdapterRef`), a merged-model directory
(:class:`MergedRef`), or the run's pair decoding contrastively (:class:`ContrastivePair`). The
two directories carry a ``lightreasoner.json`` (:data:`~.checkpoints.META_FILE`) with the full base
spec; :func:`resolve_model_ref` reads it and says which. Each reference owns what its
consumers need: its identity (the shared evaluation store's key is computed from it), its
tokenizer, its engine and that engine's key, and its JSON form (``to_dict``: the ``models``
records of ``report.json``).

This module stands in ``training`` (not ``models``) because an adapter is loaded through
:func:`~.checkpoints.load_adapted_model` and engines are built by :mod:`lightreasoner.generation`,
both above the ``models`` floor.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lightreasoner.models import spec as models
from lightreasoner.models.spec import ModelSpec

from .checkpoints import META_FILE, load_adapted_model


@dataclass(frozen=True)
class ModelRef(ABC):
    """A resolved model reference; one of the variants below."""

    kind: ClassVar[str]
    """Its ``kind`` in :meth:`to_dict` (``spec``, ``lora_adapter``, ``merged``, ``contrastive_decoding``)."""

    @property
    def base(self) -> ModelSpec | None:
        """The checkpoint it was trained from (an adapter's or a merged model's ``trained_from``), else None."""
        return getattr(self, "trained_from", None)

    @abstractmethod
    def to_dict(self) -> dict:
        """The JSON form: ``{"kind", "spec", "base", "path"}`` (a pair adds ``amateur`` and ``alpha``)."""

    @abstractmethod
    def identity(self) -> dict:
        """What determines its outputs (file fingerprints or hub name + revision): the
        ``model_identity`` of its evaluation settings, and so of the shared store's key."""

    def check(self, what: str) -> None:
        """Its values before anything is loaded (``what`` names it in errors). Nothing here: an
        adapter's or merged model's directory was read when it was resolved, a pair's specs are
        ``model_pair``'s, checked with it."""

    @abstractmethod
    def load_tokenizer(self, what: str):
        """Its tokenizer (``what`` names it in errors)."""

    @abstractmethod
    def load_model(self, what: str):
        """Its model, in eval mode on its device."""

    def load_engine(self, what: str, tokenizer, generation: Mapping | None = None):
        """The generation engine that evaluates it: the configured engine (``generation``) on its model."""
        from lightreasoner.generation import build_engine

        return build_engine(generation, lambda: self.load_model(what), tokenizer, spec=self._engine_spec())

    def engine_key(self, configured: dict | None) -> dict:
        """The engine in its report record: the configured engine's key (:func:`~lightreasoner.generation.engine_key`)."""
        return configured or {"engine": "hf", "dtype": "the model's"}

    def _engine_spec(self) -> ModelSpec | None:
        """The checkpoint an engine that loads its own weights reads (None: there is none)."""
        return None


@dataclass(frozen=True)
class _Checkpoint(ModelRef):
    """A reference loaded as one checkpoint (``spec``)."""

    spec: ModelSpec

    def identity(self) -> dict:
        return self.spec.identity()

    def load_tokenizer(self, what: str):
        return models.load_tokenizer(self.spec, what)

    def load_model(self, what: str):
        return models.load_model(self.spec, what)

    def _engine_spec(self) -> ModelSpec:
        return self.spec


@dataclass(frozen=True)
class SpecRef(_Checkpoint):
    """A checkpoint: a ``ModelSpec``, a plain local directory or a hub name."""

    kind: ClassVar[str] = "spec"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "spec": self.spec.to_dict(), "base": None, "path": None}

    def check(self, what: str) -> None:
        """The spec's values, and its local directory or GGUF file (:meth:`ModelSpec.check`)."""
        self.spec.check(what)


@dataclass(frozen=True)
class MergedRef(_Checkpoint):
    """A merged-model directory: loaded as a local checkpoint (``spec``) at its base spec's dtype
    and device."""

    kind: ClassVar[str] = "merged"
    trained_from: ModelSpec
    path: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "spec": self.spec.to_dict(), "base": self.trained_from.to_dict(), "path": self.path}


@dataclass(frozen=True)
class AdapterRef(ModelRef):
    """A LoRA adapter directory, attached to its rebuilt base when loaded."""

    kind: ClassVar[str] = "lora_adapter"
    trained_from: ModelSpec
    path: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "spec": None, "base": self.trained_from.to_dict(), "path": self.path}

    def identity(self) -> dict:
        return {"adapter": ModelSpec(name_or_path=self.path).identity(), "base": self.trained_from.identity()}

    def load_tokenizer(self, what: str):
        """The adapter's own copy of the tokenizer, else its base's."""
        adapter = Path(self.path)
        source = ModelSpec(name_or_path=str(adapter)) if (adapter / "tokenizer_config.json").is_file() else self.trained_from
        return models.load_tokenizer(source, what)

    def load_model(self, what: str):
        model, _ = load_adapted_model(self.path, device=None)
        return model

    def load_engine(self, what: str, tokenizer, generation: Mapping | None = None):
        from lightreasoner.generation import engine_class

        if engine_class(generation).loads_own_weights:
            raise ValueError(
                f"{what}: generation={engine_class(generation).name} evaluates whole checkpoints, not a LoRA adapter; "
                "evaluate the merged directory (distill.merge=true writes it)"
            )
        return super().load_engine(what, tokenizer, generation)


@dataclass(frozen=True)
class ContrastivePair(ModelRef):
    """The pair decoding contrastively at ``alpha``: a model of its own, whatever engine is
    configured, whose tokenizer and model are the expert's."""

    kind: ClassVar[str] = "contrastive_decoding"
    expert: ModelSpec
    amateur: ModelSpec
    alpha: float

    def to_dict(self) -> dict:
        return {"kind": self.kind, "spec": self.expert.to_dict(), "amateur": self.amateur.to_dict(), "alpha": self.alpha,
                "base": None, "path": None}

    def identity(self) -> dict:
        return {"expert": self.expert.identity(), "amateur": self.amateur.identity(), "alpha": self.alpha}

    def load_tokenizer(self, what: str):
        return models.load_tokenizer(self.expert, what)

    def load_model(self, what: str):
        return models.load_model(self.expert, what)

    def load_engine(self, what: str, tokenizer, generation: Mapping | None = None):
        """The contrastive-decoding engine on the pair (``generation`` is not used)."""
        from lightreasoner.generation.contrastive import ContrastiveDecodingEngine

        models.check_pair_tokenizers(
            tokenizer, models.load_tokenizer(self.amateur, what), self.expert.display_name(), self.amateur.display_name()
        )
        amateur = models.load_model(self.amateur, what)
        return ContrastiveDecodingEngine(self.load_model(what), tokenizer, amateur=amateur, alpha=self.alpha)

    def engine_key(self, configured: dict | None) -> dict:
        return {"engine": self.kind, "alpha": self.alpha}


def resolve_model_ref(ref: Any) -> ModelRef:
    """What a model entry's ``ref`` points at: a :class:`ModelRef` as it is; a ``ModelSpec`` or a
    mapping of one (:class:`SpecRef`); a directory whose ``lightreasoner.json`` says
    ``lora_adapter`` (:class:`AdapterRef`) or ``merged`` (:class:`MergedRef`); any other directory
    or a hub name (:class:`SpecRef`)."""
    if isinstance(ref, ModelRef):
        return ref
    if isinstance(ref, (ModelSpec, Mapping)) or hasattr(ref, "items"):
        return SpecRef(ModelSpec.from_any(dict(ref) if not isinstance(ref, ModelSpec) else ref))
    ref = str(ref)
    path = Path(os.path.expanduser(ref))
    meta_path = path / META_FILE
    if path.is_dir() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        kind = meta.get("kind")
        base = ModelSpec.from_any(meta["base"]) if meta.get("base") else None
        if kind == AdapterRef.kind:
            if base is None:
                raise ValueError(f"{meta_path}: a lora_adapter needs its 'base' model spec")
            return AdapterRef(base, str(path.resolve()))
        if kind == MergedRef.kind and base is not None:
            spec = ModelSpec(name_or_path=str(path.resolve()), dtype=base.dtype, device=base.device, trust_remote_code=base.trust_remote_code)
            return MergedRef(spec, base, str(path.resolve()))
    name = str(path.resolve()) if path.exists() else ref
    return SpecRef(ModelSpec(name_or_path=name))
