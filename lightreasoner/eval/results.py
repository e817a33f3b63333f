"""Per-problem result files of the evaluation stage: ``{out_dir}/{model}/{benchmark}.jsonl``,
one JSON line per problem, appended batch by batch (a rerun resumes: problems already there are
not regenerated), beside a ``{benchmark}.settings.json`` that refuses a resume under other
settings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lightreasoner.files import atomic_write_json

log = logging.getLogger(__name__)


def read_rows(path: Path) -> dict[str, dict]:
    """Rows already written to ``path`` by id. A truncated last line (an interrupted write)
    is cut from the file; a malformed line elsewhere is an error naming the line."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    rows: dict[str, dict] = {}
    offset = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if line.strip():
            try:
                row = json.loads(line)
                if last:  # complete JSON but no newline yet: finish the line
                    with open(path, "ab") as f:
                        f.write(b"\n")
            except json.JSONDecodeError:
                if not last:
                    raise ValueError(f"{path}:{i + 1}: malformed JSON line in evaluation results") from None
                log.warning("%s: dropping a truncated last line (an interrupted write)", path)
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
