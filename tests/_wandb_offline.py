"""Read an offline W&B run (``offline-run-*/run-*.wandb``) without the network: the file is a
LevelDB-style record log (32 KiB blocks; each record a 7-byte header: crc32, length, type) of
``wandb_internal_pb2.Record`` messages, after a 7-byte ``:W&B`` file header."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", path
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            buf = chunk
        elif kind == MIDDLE:
            buf += chunk
        elif kind == LAST:
            yield buf + chunk
            buf = b""


def read_offline_run(run_dir: Path) -> dict:
    """``{"run": {group, job_type, name, exit_code}, "config": {...}, "summary": {...}, "history_keys": set}``."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    out: dict = {"run": {}, "config": {}, "summary": {}, "history_keys": set()}
    for data in _records(path):
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"].update(group=rec.run.run_group, job_type=rec.run.job_type, name=rec.run.display_name)
            out["config"].update({it.key: json.loads(it.value_json) for it in rec.run.config.update})
        elif kind == "config":
            out["config"].update({it.key: json.loads(it.value_json) for it in rec.config.update})
        elif kind == "summary":
            out["summary"].update({it.key: json.loads(it.value_json) for it in rec.summary.update if it.key})
        elif kind == "history":
            out["history_keys"].update(it.key or "/".join(it.nested_key) for it in rec.history.item)
        elif kind == "exit":
            out["run"]["exit_code"] = rec.exit.exit_code
    return out
