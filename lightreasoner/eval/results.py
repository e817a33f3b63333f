"""Per-problem result files of the evaluation stage: ``{out_dir}/{model}/{benchmark}.jsonl``,
one JSON line per problem, appended batch by batch (a rerun resumes: problems already there are
not regenerated), beside a ``{benchmark}.settings.json`` that refuses a resume under other
settings. Records committed as evidence (``docs/results/*_records/``) are kept gzip-compressed,
``{benchmark}.jsonl.gz``: :func:`read_rows` reads them as it reads the plain file, and
:func:`record_path` / :func:`record_benchmarks` find either (the evaluation itself writes and
resumes the plain file only).

:class:`SharedResults` is the cross-run store (``eval.cache``): rows of an evaluation whose
settings are identical but for the model's display name (same model files, benchmark, split,
prompt, engine, token budget) are kept once under ``{cache_dir}/eval/{key}/``, so every job of
a sweep evaluates the untuned expert once, and a second run reuses the first one's rows.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from filelock import FileLock

from lightreasoner.core.files import atomic_write_json, canonical_json

log = logging.getLogger(__name__)


RECORD_SUFFIXES = (".jsonl", ".jsonl.gz")
"""A benchmark's per-problem records: ``{benchmark}.jsonl``, or gzip-compressed ``{benchmark}.jsonl.gz``."""


def record_path(directory: Path, benchmark: str) -> Path:
    """``{directory}/{benchmark}.jsonl``, or its compressed copy ``{benchmark}.jsonl.gz`` when
    only that one exists."""
    plain = Path(directory) / f"{benchmark}{RECORD_SUFFIXES[0]}"
    packed = Path(directory) / f"{benchmark}{RECORD_SUFFIXES[1]}"
    return packed if not plain.is_file() and packed.is_file() else plain


def record_benchmarks(directory: Path) -> list[str]:
    """The benchmarks with per-problem records in ``directory`` (plain or compressed), sorted."""
    names = {p.name[: -len(s)] for p in Path(directory).glob("*.jsonl*") for s in RECORD_SUFFIXES if p.name.endswith(s)}
    return sorted(names)


def read_rows(path: Path) -> dict[str, dict]:
    """Rows already written to ``path`` by id (a name ending in ``.gz`` is read through gzip).
    A truncated last line (an interrupted write) is cut from a plain file (dropped, with a
    warning, from a compressed one); a malformed line elsewhere is an error naming the line."""
    path = Path(path)
    if not path.exists():
        return {}
    packed = path.name.endswith(".gz")
    if packed:
        with gzip.open(path, "rb") as f:
            data = f.read()
    else:
        data = path.read_bytes()
    rows: dict[str, dict] = {}
    offset = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if line.strip():
            try:
                row = json.loads(line)
                if last and not packed:  # complete JSON but no newline yet: finish the line
                    with open(path, "ab") as f:
                        f.write(b"\n")
            except json.JSONDecodeError:
                if not last:
                    raise ValueError(f"{path}:{i + 1}: malformed JSON line in evaluation results") from None
                log.warning("%s: dropping a truncated last line (an interrupted write)", path)
                if not packed:
                    with open(path, "r+b") as f:
                        f.truncate(offset)
                break
            rows[row["id"]] = row
        offset += len(line) + 1
    return rows


def check_settings(path: Path, settings: dict) -> None:
    """Write ``settings`` beside a results file, or refuse to resume under different ones."""
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise ValueError(
                f"{path}: results in this directory were generated with different settings ({', '.join(diff)}); "
                "use another output directory or delete these results"
            )
        return
    atomic_write_json(path, settings)


class SharedResults:
    """Per-problem rows of one evaluation setting, shared by every run that uses it.

    The key is a hash of the run settings without the model's display name; the settings are
    stored beside the rows and checked on every open (a hash collision cannot mix results).
    Reads and appends hold a file lock, so concurrent jobs neither see a half-written line nor
    interleave theirs; a row written twice (two jobs racing on one problem) is read once.
    """

    NAME_FIELDS = ("model",)

    def __init__(self, cache_dir: Path, settings: dict) -> None:
        shared = {k: v for k, v in settings.items() if k not in self.NAME_FIELDS}
        self.dir = self.key_dir(cache_dir, settings)
        self.path = self.dir / f"{settings['benchmark']}.jsonl"
        self.lock = FileLock(str(self.path) + ".lock")
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.lock:
            check_settings(self.path.with_name(f"{settings['benchmark']}.settings.json"), shared)

    @classmethod
    def key_dir(cls, cache_dir: Path, settings: dict) -> Path:
        """The store directory of a run's ``{benchmark}.settings.json`` settings."""
        shared = {k: v for k, v in settings.items() if k not in cls.NAME_FIELDS}
        return Path(cache_dir) / hashlib.sha256(canonical_json(shared).encode()).hexdigest()[:16]

    def rows(self) -> dict[str, dict]:
        with self.lock:
            return read_rows(self.path)

    def append(self, lines: Iterable[str]) -> None:
        data = "".join(lines)
        if not data:
            return
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
