"""Benchmark and training-set loading: local JSON Lines (the files in ``../shared/data``) or the hub.

A dataset config (``conf/dataset/*.yaml``) names a row ``format``; each format has one parser
that turns a raw row into a :class:`~lightreasoner.data.records.Problem` (question text as the
model sees it, gold answer as text). Problem ids are ``"{name}/{split}/{index in file order}"``
whatever shuffling or truncation follows, so results and caches stay comparable.

Config keys used here: ``name``, ``format``, ``answer_type``, ``files: {split: path}``,
``hub: {name, config, revision}``, ``split``, ``max_problems``, ``shuffle``, and for the
``generic`` format ``fields: {question, answer}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterable

from lightreasoner.data.answers import ANSWER_TYPES, last_boxed
from lightreasoner.data.records import Problem

log = logging.getLogger(__name__)

CHOICE_LETTERS = "ABCD"


class RowError(ValueError):
    """A row lacks a field or has one of the wrong kind (the loader adds file and line)."""


def _field(row: dict, name: str, kinds: tuple = (str,)):
    if name not in row or row[name] is None:
        raise RowError(f"missing field {name!r}")
    value = row[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # JSON true is no number
        raise RowError(f"field {name!r}: expected {'/'.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise RowError(f"field {name!r}: empty")
    return value


def _number_text(x: float | int | str) -> str:
    """``145.0`` → ``"145"``; other numbers as Python writes them."""
    if isinstance(x, str):
        return x.strip()
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def format_question(question: str, choices: list[str]) -> str:
    """A multiple-choice question as the Qwen2.5-Math toolkit writes it:
    ``<question>\nAnswer Choices: (A) … (B) … (C) … (D) …``."""
    options = " ".join(f"({CHOICE_LETTERS[i]}) {str(c).strip()}" for i, c in enumerate(choices))
    return f"{question.strip()}\nAnswer Choices: {options}"


# --------------------------------------------------------------------------- row parsers
# Each returns (question, gold answer, meta).


def _gsm8k(row: dict, cfg) -> tuple[str, str, dict]:
    solution = _field(row, "answer")
    if "####" not in solution:
        raise RowError("field 'answer': no '####' before the final answer")
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return _field(row, "question"), gold, {}


def _math500(row: dict, cfg) -> tuple[str, str, dict]:
    meta = {k: row[k] for k in ("subject", "level", "unique_id") if k in row}
    return _field(row, "problem"), _field(row, "answer").strip(), meta


def _svamp(row: dict, cfg) -> tuple[str, str, dict]:
    body = _field(row, "Body").strip()
    body = body if body.endswith(".") else body + "."  # as the toolkit: a period ends the body
    question = body + " " + _field(row, "Question").strip()
    gold = _number_text(_field(row, "Answer", (int, float, str)))
    return question, gold, {k: row[k] for k in ("ID", "Type") if k in row}


def _asdiv(row: dict, cfg) -> tuple[str, str, dict]:
    question = _field(row, "body").strip() + " " + _field(row, "question").strip()
    return question, _field(row, "answer").strip(), {k: row[k] for k in ("solution_type",) if k in row}


def _minerva_math(row: dict, cfg) -> tuple[str, str, dict]:
    gold = last_boxed(_field(row, "solution"))
    if gold is None:
        raise RowError("field 'solution': no \\boxed{} answer")
    return _field(row, "problem"), gold, {k: row[k] for k in ("type",) if k in row}


def _olympiadbench(row: dict, cfg) -> tuple[str, str, dict]:
    answers = _field(row, "final_answer", (list, str))
    answers = [answers] if isinstance(answers, str) else answers
    if not answers:
        raise RowError("field 'final_answer': empty list")
    if not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in answers):
        raise RowError("field 'final_answer': expected answers as text or numbers")
    gold = ", ".join(str(a).replace("$", "").strip() for a in answers)
    question = _field(row, "question")
    if row.get("context"):
        question = f"{str(row['context']).strip()}\n{question}"
    meta = {k: row[k] for k in ("id", "subfield", "unit", "answer_type", "is_multiple_answer") if k in row}
    return question, gold, meta


def _mmlu_stem(row: dict, cfg) -> tuple[str, str, dict]:
    choices = _field(row, "choices", (list,))
    if len(choices) != 4:
        raise RowError(f"field 'choices': expected 4 options, got {len(choices)}")
    if not all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in choices):
        raise RowError("field 'choices': expected the options as text")
    index = _field(row, "answer", (int, str))
    if isinstance(index, str):  # one letter A-D or an index "0"-"3" (never a substring of "ABCD", never "")
        s = index.strip().upper()
        if len(s) == 1 and s in CHOICE_LETTERS:
            index = CHOICE_LETTERS.index(s)
        elif s.isascii() and s.isdigit():
            index = int(s)
        else:
            raise RowError(f"field 'answer': expected a letter A-D or an index 0-3, got {index!r}")
    if not 0 <= int(index) < 4:
        raise RowError(f"field 'answer': expected an index 0-3, got {index}")
    question = format_question(_field(row, "question"), choices)
    return question, CHOICE_LETTERS[int(index)], {"answer_index": int(index), **({"type": row["type"]} if "type" in row else {})}


def _generic(row: dict, cfg) -> tuple[str, str, dict]:
    fields = dict(cfg.get("fields") or {})
    q_field, a_field = fields.get("question", "question"), fields.get("answer", "answer")
    return _field(row, q_field), _number_text(_field(row, a_field, (str, int, float))), {}


PARSERS: dict[str, Callable[[dict, Any], tuple[str, str, dict]]] = {
    "gsm8k": _gsm8k,
    "math500": _math500,
    "svamp": _svamp,
    "asdiv": _asdiv,
    "minerva_math": _minerva_math,
    "olympiadbench": _olympiadbench,
    "mmlu_stem": _mmlu_stem,
    "generic": _generic,
}
"""Row parser per dataset ``format``."""


# --------------------------------------------------------------------------- sources


def _get(cfg, key: str, default=None):
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def local_file(dataset_cfg, split: str) -> Path | None:
    """The configured local file for ``split`` (None when the config names none)."""
    files = _get(dataset_cfg, "files", {}) or {}
    path = files.get(split) if hasattr(files, "get") else None
    return Path(os.path.expanduser(str(path))) if path else None


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    """(line number, row) for each non-blank line; errors name the file and line."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the file ({e.strerror or e})") from None
    with f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                yield lineno, row
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{lineno + 1}: not UTF-8 text ({e.reason})") from None


def _hub_rows(dataset_cfg, split: str) -> Iterable[tuple[int, dict]]:
    hub = _get(dataset_cfg, "hub")
    if not hub or not hub.get("name"):
        raise FileNotFoundError(
            f"dataset {_get(dataset_cfg, 'name', '?')!r}: no local file for split {split!r} "
            f"(files: {dict(_get(dataset_cfg, 'files', {}) or {})}) and no hub name configured"
        )
    try:
        from datasets import load_dataset

        ds = load_dataset(hub["name"], hub.get("config"), revision=hub.get("revision"), split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown name or split: one line naming all three
        path = local_file(dataset_cfg, split)
        raise FileNotFoundError(
            f"dataset {_get(dataset_cfg, 'name', '?')!r}: {'no local file ' + str(path) if path else 'no local file'} for split "
            f"{split!r}, and the hub copy {hub['name']}[{split}] cannot be loaded ({' '.join(str(e).split())[:240] or type(e).__name__})"
        ) from None
    for i, row in enumerate(ds, start=1):
        yield i, dict(row)


def _source(dataset_cfg, split: str) -> tuple[str, Iterable[tuple[int, dict]]]:
    path = local_file(dataset_cfg, split)
    if path is not None and path.exists():
        return str(path), _read_jsonl(path)
    if path is not None:
        log.info("dataset %s: %s not found; loading split %r from the hub", _get(dataset_cfg, "name"), path, split)
    hub = _get(dataset_cfg, "hub") or {}
    return f"hub:{hub.get('name')}[{split}] row", _hub_rows(dataset_cfg, split)


# --------------------------------------------------------------------------- public API

DATASET_KEYS = ("name", "format", "answer_type", "files", "hub", "split", "max_problems", "shuffle", "max_new_tokens", "fields")
"""The keys of a ``dataset`` config (``conf/dataset/*.yaml``)."""


def check_dataset_config(dataset_cfg, split: str | None = None, what: str = "dataset") -> None:
    """A dataset config's keys and values before anything is read: one ``ValueError`` naming
    the first bad key (``what`` is its place in the run config, e.g. ``dataset``)."""
    d = {k: _get(dataset_cfg, k) for k in DATASET_KEYS}
    keys = list(dataset_cfg.keys()) if hasattr(dataset_cfg, "keys") else []
    unknown = sorted(str(k) for k in keys if k not in DATASET_KEYS)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; expected some of {sorted(DATASET_KEYS)}")

    def bad(key: str, expected: str) -> ValueError:
        return ValueError(f"{what}.{key}: expected {expected}, got {d[key]!r}")

    if not isinstance(d["name"], str) or not d["name"]:
        raise bad("name", "a non-empty string")
    fmt = d["format"] if d["format"] is not None else d["name"]
    if fmt not in PARSERS:
        raise ValueError(f"{what}.format: unknown format {fmt!r}; expected one of {sorted(PARSERS)}")
    if d["answer_type"] not in ANSWER_TYPES:
        raise bad("answer_type", f"one of {list(ANSWER_TYPES)}")
    split = split or d["split"]
    if not isinstance(split, str) or not split:
        raise ValueError(f"{what}.split: expected a split name (train, test, ...), got {split!r}")
    mp = d["max_problems"]
    if mp is not None and (isinstance(mp, bool) or not isinstance(mp, int) or mp < 1):
        raise bad("max_problems", "an integer >= 1 or null (all)")
    if d["shuffle"] is not None and not isinstance(d["shuffle"], bool):
        raise bad("shuffle", "true or false")
    mn = d["max_new_tokens"]
    if mn is not None and (isinstance(mn, bool) or not isinstance(mn, int) or mn < 1):
        raise bad("max_new_tokens", "an integer >= 1 or null")
    files = d["files"] or {}
    if not hasattr(files, "get") or not all(isinstance(v, str) or v is None for v in files.values()):
        raise bad("files", "a mapping {split: path of a JSONL file}")
    hub = d["hub"] or {}
    if not hasattr(hub, "get") or (hub and not isinstance(hub.get("name"), str)):
        raise bad("hub", "null or {name, config, revision}")
    if d["fields"] is not None and (not hasattr(d["fields"], "get") or not all(isinstance(v, str) for v in d["fields"].values())):
        raise bad("fields", "a mapping {question: field name, answer: field name}")
    if not files.get(split) and not hub.get("name"):
        raise ValueError(f"{what}.split: no file for split {split!r} (files: {sorted(files)}) and no hub copy")


def load_problems(
    dataset_cfg,
    split: str | None = None,
    max_problems: int | None = None,
    shuffle: bool | None = None,
    seed: int = 0,
) -> list[Problem]:
    """The problems of ``split`` (default ``dataset_cfg.split``) as :class:`Problem` records.

    ``max_problems`` / ``shuffle`` default to the config's values; ``max_problems`` null or
    ``<= 0`` means all. Truncation takes the first N in file order, after a seeded shuffle
    when ``shuffle`` is on. Bad input raises one error naming the file, line and field.
    """
    check_dataset_config(dataset_cfg, split)
    name = _get(dataset_cfg, "name")
    fmt = _get(dataset_cfg, "format", name)
    answer_type = _get(dataset_cfg, "answer_type")
    if fmt not in PARSERS:
        raise ValueError(f"dataset.format: unknown format {fmt!r}; expected one of {sorted(PARSERS)}")
    if answer_type is None:
        raise ValueError(f"dataset.answer_type: missing for dataset {name!r}")
    split = split or _get(dataset_cfg, "split")
    if not split:
        raise ValueError(f"dataset.split: missing for dataset {name!r}")
    max_problems = _get(dataset_cfg, "max_problems") if max_problems is None else max_problems
    shuffle = bool(_get(dataset_cfg, "shuffle", False)) if shuffle is None else bool(shuffle)

    where, rows = _source(dataset_cfg, split)
    parse = PARSERS[fmt]
    problems = []
    for index, (lineno, row) in enumerate(rows):
        try:
            question, gold, meta = parse(row, dataset_cfg)
            if not str(gold).strip():  # e.g. nothing after '####', an empty \boxed{}: never a silent unanswerable problem
                raise RowError("empty gold answer")
        except RowError as e:
            raise ValueError(f"{where}:{lineno}: {e}") from None
        problems.append(Problem(id=f"{name}/{split}/{index}", question=question, answer=gold, answer_type=answer_type, meta=meta))
    if not problems:
        raise ValueError(f"{where.removesuffix(' row')}: no problems (the file has no rows)")
    if shuffle:
        random.Random(seed).shuffle(problems)
    if max_problems is not None and int(max_problems) > 0:
        problems = problems[: int(max_problems)]
    return problems


def dataset_identity(dataset_cfg, split: str | None = None) -> dict:
    """What determines the problems' text, for cache keys.

    Local file: resolved path and sha256 of its content. Hub: name, config, revision, split.
    Both include the dataset name, row format and (generic format) field names.
    """
    split = split or _get(dataset_cfg, "split")
    ident: dict[str, Any] = {"name": _get(dataset_cfg, "name"), "format": _get(dataset_cfg, "format"), "split": split}
    if _get(dataset_cfg, "fields"):
        ident["fields"] = dict(_get(dataset_cfg, "fields"))
    path = local_file(dataset_cfg, split)
    if path is not None and path.exists():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        ident.update(path=str(path.resolve()), sha256=h.hexdigest())
        return ident
    hub = _get(dataset_cfg, "hub") or {}
    ident.update(hub=hub.get("name"), config=hub.get("config"), revision=hub.get("revision") or "main")
    return ident


def known_datasets() -> list[str]:
    """Names of the dataset configs (``conf/dataset/*.yaml``), i.e. the valid benchmark names."""
    from lightreasoner.core.config import config_dir

    return sorted(p.stem for p in (config_dir() / "dataset").glob("*.yaml"))


def dataset_config(name: str, data_dir: str | Path | None = None, paths: dict | None = None) -> dict:
    """``conf/dataset/{name}.yaml`` as a plain dict, ``${paths.data_dir}`` resolved.

    ``data_dir`` defaults to env ``LIGHTREASONER_DATA``, else ``../shared/data`` beside the
    project (the same default as ``conf/paths/default.yaml``). ``paths`` (a run's resolved
    ``paths`` group) fills every ``${paths.*}`` instead, e.g. the demo's ``demo_dir``.
    """
    from omegaconf import OmegaConf

    from lightreasoner.core.config import PROJECT_ROOT, config_dir

    path = config_dir() / "dataset" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"dataset: unknown dataset {name!r}; expected one of {known_datasets()}")
    data_dir = data_dir or os.environ.get("LIGHTREASONER_DATA") or PROJECT_ROOT.parent / "shared" / "data"
    node = OmegaConf.create({"paths": dict(paths) if paths is not None else {"data_dir": str(data_dir)}, "d": OmegaConf.load(path)})
    return OmegaConf.to_container(node.d, resolve=True)
