"""Loading expert/amateur models and checking that a pair can be contrasted.

A :class:`ModelSpec` names one checkpoint: a hub name (with optional revision) or a local
directory, optionally a ``gguf_file`` inside it. Loading goes through transformers'
``Auto*`` classes; GGUF checkpoints are dequantized by transformers and then rebuilt as a
plain model (``plain=True``) wherever a saveable/mergeable model is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@dataclass
class ModelSpec:
    """One checkpoint, as a config group entry (``model_pair.expert`` / ``model_pair.amateur``)."""

    name_or_path: str
    """Hub name (``Qwen/Qwen2.5-Math-1.5B``) or a local directory."""
    revision: str | None = None
    """Hub revision: a full 40-hex commit (the paper presets pin one), a branch or a tag;
    ignored for local directories. A malformed one (a shortened or over-long commit, characters
    no git ref can hold) is a validation error; a pin the hub does not have is one error line
    naming the model and the revision when it loads."""
    gguf_file: str | None = None
    """File name of a GGUF checkpoint inside ``name_or_path`` (dequantized on load)."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16."""
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    trust_remote_code: bool = False
    """Allow model code from the hub. Off unless a config turns it on."""
    tokenizer: str | None = None
    """Load the tokenizer from here instead of ``name_or_path`` (same gguf_file rules)."""

    @classmethod
    def from_any(cls, spec: Any, what: str = "model spec") -> "ModelSpec":
        """From a spec, a name or a mapping; ``what`` (e.g. ``model_pair.expert``) names it in errors."""
        if isinstance(spec, ModelSpec):
            return spec
        if isinstance(spec, str):
            return cls(name_or_path=spec)
        d = dict(spec)
        d.pop("_target_", None)
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{what}: unknown field(s) {sorted(unknown)}; expected some of {sorted(known)}")
        if not d.get("name_or_path"):
            raise ValueError(f"{what}.name_or_path: required (a hub name or a local directory)")
        return cls(**d)

    def check(self, what: str = "model", paths: bool = True) -> None:
        """The spec's values before anything is loaded: one error naming the first bad key
        (``{what}.dtype`` ...) or (``paths``) the local directory / GGUF file that is not there."""
        for key in ("name_or_path", "revision", "gguf_file", "tokenizer"):
            v = getattr(self, key)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"{what}.{key}: expected a string{'' if key == 'name_or_path' else ' or null'}, got {v!r}")
        if self.revision is not None and not revision_ok(self.revision):
            raise ValueError(
                f"{what}.revision: expected a full 40-hex commit, a branch or a tag name (or null), got {self.revision!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"{what}.dtype: expected one of {sorted(DTYPES)}, got {self.dtype!r}")
        try:
            ok = isinstance(self.device, str) and (self.device == "auto" or torch.device(self.device) is not None)
        except (RuntimeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{what}.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not isinstance(self.trust_remote_code, bool):
            raise ValueError(f"{what}.trust_remote_code: expected true or false, got {self.trust_remote_code!r}")
        if paths:
            _check_exists(self, what)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_identity(cls, ident: dict) -> "ModelSpec":
        """Back from :meth:`identity` (e.g. a cache key) to a loadable spec."""
        if "hub" in ident:
            return cls(ident["hub"], revision=ident.get("revision"), dtype=ident.get("dtype", "float32"))
        gguf = next((f["name"] for f in ident.get("files", []) if f["name"].endswith(".gguf")), None)
        return cls(ident["local"], gguf_file=gguf, dtype=ident.get("dtype", "float32"))

    @property
    def is_local(self) -> bool:
        return Path(os.path.expanduser(self.name_or_path)).exists()

    @property
    def torch_dtype(self) -> torch.dtype:
        try:
            return DTYPES[self.dtype]
        except KeyError:
            raise ValueError(f"model dtype: expected one of {sorted(DTYPES)}, got {self.dtype!r}") from None

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def display_name(self) -> str:
        name = self.name_or_path.rstrip("/")
        return f"{name}/{self.gguf_file}" if self.gguf_file else name

    def pinned_name(self) -> str:
        """:meth:`display_name`, with ``at revision X`` for a hub model with a revision."""
        if self.revision and not self.is_local:
            return f"{self.display_name()!r} at revision {self.revision}"
        return repr(self.display_name())

    def identity(self) -> dict:
        """What determines this model's outputs, for cache keys.

        Hub models: name + revision. Local files: resolved path, and each weights/config
        file's name, size and full sha256 (:func:`file_sha256`), so identical files give the same
        keys on any machine and in any session (a re-assembled GGUF file, a copied cache), and
        any changed byte gives new ones.
        """
        ident: dict[str, Any] = {"dtype": self.dtype}
        if not self.is_local:
            ident.update(hub=self.name_or_path, revision=self.revision or "main")
            return ident
        root = Path(os.path.expanduser(self.name_or_path)).resolve()
        if self.gguf_file:
            files = [root / self.gguf_file]
        else:
            files = sorted(p for p in root.iterdir() if p.suffix in {".safetensors", ".bin", ".json", ".model", ".gguf"})
        ident["local"] = str(root)
        ident["files"] = [_file_fingerprint(f) for f in files]
        return ident


COMMIT_RE = re.compile(r"[0-9a-fA-F]{40}")
_REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def revision_ok(revision: str) -> bool:
    """A full 40-hex commit, or a branch / tag name (``main``, ``v1.0``, ``refs/pr/3``). Refused:
    hex strings of 7-39 or more than 40 digits (a shortened or mangled commit: the hub needs all
    40), and names no git ref can have (spaces, ``..``, ``~^:?*[\\``, a trailing ``/``, ``.`` or
    ``.lock``)."""
    if not isinstance(revision, str) or not revision:
        return False
    if COMMIT_RE.fullmatch(revision):
        return True
    if re.fullmatch(r"[0-9a-fA-F]{7,}", revision) and re.search(r"[a-fA-F]", revision):
        return False
    return bool(_REF_RE.fullmatch(revision)) and ".." not in revision and "//" not in revision \
        and not revision.endswith(("/", ".", ".lock"))


def _file_fingerprint(path: Path) -> dict:
    return {"name": path.name, "size": path.stat().st_size, "sha256": file_sha256(path)}


_SHA256_MEMO: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """The full sha256 of ``path``, hashed once per file version: memoised in the process and
    in the shared cache (``file_hashes/``, keyed by the resolved path, size, mtime, ctime and
    inode: any write or touch re-hashes),
    so a multi-GB checkpoint is read once, not on every run. An unwritable cache only costs a
    re-hash."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if stamp in _SHA256_MEMO:
        return _SHA256_MEMO[stamp]
    memo = cache_root() / "file_hashes" / hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:32]
    try:
        digest = memo.read_text().strip()
    except OSError:
        digest = ""
    if len(digest) != 64:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        digest = h.hexdigest()
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(digest)
            tmp.replace(memo)
        except OSError:
            pass
    _SHA256_MEMO[stamp] = digest
    return digest


def _check_exists(spec: ModelSpec, what: str) -> None:
    path = Path(os.path.expanduser(spec.name_or_path))
    looks_local = spec.name_or_path.startswith(("/", ".", "~")) or path.exists()
    if looks_local and not path.exists():
        raise FileNotFoundError(f"{what}.name_or_path: no such directory {spec.name_or_path!r}")
    if path.exists() and not spec.gguf_file and not any((path / f).is_file() for f in ("config.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"{what}.name_or_path: {spec.name_or_path!r} is not a model directory (no config.json)")
    if spec.gguf_file and path.exists() and not (path / spec.gguf_file).is_file():
        raise FileNotFoundError(
            f"{what}.gguf_file: {spec.gguf_file!r} not found in {spec.name_or_path!r} "
            "(run ../shared/tools/fetch-offline-models, or set LIGHTREASONER_MODELS)"
        )


def _load_error(err: Exception, where: str) -> Exception:
    """A transformers loading error as one line naming the config key (``FileNotFoundError`` for
    a checkpoint that is not there or not reachable, else ``ValueError``)."""
    line = " ".join(str(err).split())[:300]
    return FileNotFoundError(f"{where} ({line})") if isinstance(err, OSError) else ValueError(f"{where} ({line})")


def load_tokenizer(spec: ModelSpec, what: str = "model", padding_side: str = "left"):
    from transformers import AutoTokenizer

    _check_exists(spec, what)
    src = spec.tokenizer or spec.name_or_path
    kwargs: dict[str, Any] = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    if spec.gguf_file and not spec.tokenizer:
        # the dequantized copy holds the converted tokenizer (GGUF conversion is slow)
        src = str(_ensure_dequantized(spec, spec.torch_dtype))
        kwargs = {}
    try:
        tok = AutoTokenizer.from_pretrained(os.path.expanduser(src), **kwargs)
    except (OSError, ValueError) as err:
        raise _load_error(err, f"{what}: cannot load the tokenizer of {spec.pinned_name()}") from None
    tok.padding_side = padding_side
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def cache_root() -> Path:
    """The shared cache (``LIGHTREASONER_CACHE``, default ``~/.cache/lightreasoner``)."""
    return Path(os.path.expanduser(os.environ.get("LIGHTREASONER_CACHE", "~/.cache/lightreasoner")))


def dequantized_dir(spec: ModelSpec, dtype: torch.dtype) -> Path:
    """Where a GGUF checkpoint's dequantized copy (plain safetensors + tokenizer) is kept."""
    ident = json.dumps({"id": spec.identity(), "dtype": str(dtype), "format": 2}, sort_keys=True)
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_root() / "dequantized" / f"{Path(spec.gguf_file).stem}-{key}"


def load_model(spec: ModelSpec, what: str = "model", plain: bool = False, dtype: torch.dtype | None = None):
    """Load a causal LM in eval mode on its device.

    GGUF checkpoints are dequantized once and kept as a plain checkpoint in the shared cache
    (``dequantized/``), so later loads are fast and the model is always a plain one that
    ``save_pretrained`` and peft merging accept (transformers refuses to save GGUF-flagged
    models). ``dtype`` overrides the spec's dtype (e.g. float32 for merging). ``plain`` is
    accepted for clarity at call sites that save or merge; loads are always plain.
    """
    from transformers import AutoModelForCausalLM

    _check_exists(spec, what)
    dtype = dtype or spec.torch_dtype
    kwargs: dict[str, Any] = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code, dtype=dtype)
    if spec.gguf_file:
        model = AutoModelForCausalLM.from_pretrained(str(_ensure_dequantized(spec, dtype)), dtype=dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(os.path.expanduser(spec.name_or_path), **kwargs)
        except (OSError, ValueError) as err:
            raise _load_error(err, f"{what}: cannot load {spec.pinned_name()}") from None
    model.to(spec.resolved_device())
    model.eval()
    return model


def plain_checkpoint(spec: ModelSpec, what: str = "model") -> str:
    """A path or hub name another library can load ``spec`` from: the local directory or hub
    name as given, or for a GGUF checkpoint its dequantized plain copy (made once, cached)."""
    _check_exists(spec, what)
    if spec.gguf_file:
        return str(_ensure_dequantized(spec, spec.torch_dtype))
    return os.path.expanduser(spec.name_or_path)


def _ensure_dequantized(spec: ModelSpec, dtype: torch.dtype) -> Path:
    """Dequantize ``spec``'s GGUF file into the cache once (atomic publish; safe if raced)."""
    import shutil
    import tempfile

    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = dequantized_dir(spec, dtype)
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").is_file():
            return out
        log.info("dequantizing %s once into %s", spec.display_name(), out)
        src = os.path.expanduser(spec.name_or_path)
        model = AutoModelForCausalLM.from_pretrained(
            src, gguf_file=spec.gguf_file, dtype=dtype, trust_remote_code=spec.trust_remote_code
        )
        model = _rebuild_plain(model, dtype)
        tok = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf_file, trust_remote_code=spec.trust_remote_code)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "lightreasoner.json").write_text(json.dumps({"kind": "dequantized", "base": spec.to_dict()}, indent=2))
            tmp.replace(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def _rebuild_plain(model, dtype: torch.dtype):
    """A copy of ``model`` built from its config (no GGUF flag), same weights."""
    from transformers import AutoModelForCausalLM

    import copy

    config = copy.deepcopy(model.config)
    for attr in ("gguf_file", "_gguf_file", "quantization_config"):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    result = plain.load_state_dict(model.state_dict(), assign=True, strict=False)
    tied = {"lm_head.weight"} if getattr(plain.config, "tie_word_embeddings", False) else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise RuntimeError(f"rebuilding the GGUF model lost weights: missing {sorted(missing)[:5]}, unexpected {result.unexpected_keys[:5]}")
    if tied:
        plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain.to(dtype)


def eos_token_ids(tokenizer, model) -> list[int]:
    """End-of-sequence ids: the tokenizer's plus the generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(int(i) for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
    return sorted(ids)


@dataclass
class VocabCheck:
    shared_width: int
    differing_special: list[tuple[str, int | None, int | None]] = field(default_factory=list)
    shared: bool = True
    """False: the tokenizers disagree on the regular vocabulary and ``alignment="string"``
    allowed it (the pair is then aligned by token string, :mod:`lightreasoner.core.alignment`)."""


def check_pair_tokenizers(
    tok_e, tok_a, expert_name: str = "expert", amateur_name: str = "amateur", alignment: str = "shared"
) -> VocabCheck:
    """Check the pair agrees on the regular vocabulary (same token -> same id).

    Differences among special/added tokens are a warning that names them; any other mismatch
    raises one clear error naming both models, unless ``alignment`` is ``"string"``
    (``model_pair.alignment``): then the result says ``shared=False``.
    """
    ve, va = tok_e.get_vocab(), tok_a.get_vocab()
    special_e = set(getattr(tok_e, "all_special_tokens", [])) | {t.content for t in tok_e.added_tokens_decoder.values()}
    special_a = set(getattr(tok_a, "all_special_tokens", [])) | {t.content for t in tok_a.added_tokens_decoder.values()}
    special = special_e | special_a
    regular_e = {t: i for t, i in ve.items() if t not in special}
    regular_a = {t: i for t, i in va.items() if t not in special}
    bad = [t for t, i in regular_e.items() if regular_a.get(t, i) != i]
    missing = len(set(regular_e) ^ set(regular_a))
    if bad or (missing and min(len(regular_e), len(regular_a)) and missing > 0.001 * max(len(regular_e), len(regular_a))):
        if alignment == "string":
            return VocabCheck(shared_width=min(len(ve), len(va)), shared=False)
        example = ", ".join(f"{t!r}: {regular_e[t]} vs {regular_a[t]}" for t in bad[:3])
        raise ValueError(
            f"model_pair: tokenizers of expert {expert_name!r} and amateur {amateur_name!r} disagree on the regular "
            f"vocabulary ({len(bad)} tokens with different ids, {missing} present in only one"
            + (f"; e.g. {example}" if example else "")
            + "); a LightReasoner pair must share one tokenizer, or set model_pair.alignment=string"
        )
    differing = sorted(
        (t, ve.get(t), va.get(t)) for t in special if ve.get(t) != va.get(t)
    )
    if differing:
        names = ", ".join(f"{t} ({i} vs {j})" for t, i, j in differing[:10])
        log.warning(
            "model_pair: expert %s and amateur %s differ in %d special/added tokens: %s",
            expert_name, amateur_name, len(differing), names,
        )
    return VocabCheck(shared_width=min(len(ve), len(va)), differing_special=differing)


def spec_json(spec: ModelSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


def pair_specs(cfg) -> tuple[ModelSpec, ModelSpec]:
    """``(expert, amateur)`` of a run config's ``model_pair`` group, interpolations resolved.

    The amateur's ``kind`` / ``layer`` (:class:`~lightreasoner.models.pairs.PairSettings`) are not spec
    fields: an ``early_exit`` amateur's spec is the expert's, a ``checkpoint`` amateur's path
    defaults to the expert's."""
    from lightreasoner.core.config import to_plain
    from lightreasoner.models.pairs import PairSettings

    pair = cfg.model_pair
    expert = to_plain(pair.expert)
    amateur = PairSettings.from_cfg(pair).amateur_spec_fields(expert, to_plain(pair.amateur))
    return ModelSpec.from_any(expert, "model_pair.expert"), ModelSpec.from_any(amateur, "model_pair.amateur")
