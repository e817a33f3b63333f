"""Carry finished runs and the caches they read to another session or machine.

``export`` copies, into one directory, what the named runs took from the shared cache - their
sampled traces (``traces/{key}``, ``sft_solutions/{key}``: every cache directory the run's
``summary.json`` or ``stages.json`` names) and their evaluation rows in the shared store (``eval/{key}``, found from
each ``{run}/eval/{model}/{benchmark}.settings.json``) - and the runs' own small files (summary,
``stages.json``, per-problem records, the adapter, the Hydra config; not the ``merged/`` weights,
and of ``checkpoints/`` only ``last.ckpt`` of a fine-tune that has not finished - LoRA weights,
optimizer and loader state - so an interrupted fine-tune continues where it was). Cache entries
a run does not name yet (a run stopped before its summary) are given with ``--cache KIND/KEY``. ``import`` puts them back under the cache directory and the working
directory, never overwriting a file that is there. Cache keys are content hashes of the model,
data and settings (:meth:`lightreasoner.models.spec.ModelSpec.identity`), so imported caches are
hits wherever the same model and data files are, and shards are digest-checked when read.

    python -m lightreasoner.run.cache_bundle export outputs/coder_study/lightreasoner --to BUNDLE
    python -m lightreasoner.run.cache_bundle export outputs/NAME --cache traces/KEY --to BUNDLE
    python -m lightreasoner.run.cache_bundle import BUNDLE          # then rerun the runs' commands

A rerun of an imported named run resumes as it would on the machine that ran it: finished
fine-tunes are not trained again (their adapter is imported; the merged model is rebuilt from
it), finished evaluation records are not regenerated.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from lightreasoner.eval.results import SharedResults
from lightreasoner.models.spec import cache_root

__all__ = ["export_runs", "import_bundle", "TRACE_KINDS", "RUN_EXCLUDE"]

TRACE_KINDS = ("traces", "sft_solutions")
"""Cache subdirectories that hold sampled data, one directory per key."""

PACK_BYTES = 4 << 20
"""Bundle files larger than this (e.g. a tokenizer.json beside an adapter) are stored gzip-compressed."""

PACKED = ".bundle.gz"
"""Suffix of a compressed bundle file; ``import`` restores the file without it."""

RUN_EXCLUDE = ("checkpoints", "merged")
"""Run subdirectories left out of a bundle (large, and rebuilt from what is kept); an unfinished
fine-tune's ``checkpoints/last.ckpt`` is carried on its own."""


def _cache_dirs_named(value, root: Path) -> Iterator[Path]:
    """Every existing ``{root}/{kind}/{key}`` directory a summary value names, at any depth."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _cache_dirs_named(v, root)
    elif isinstance(value, list):
        for v in value:
            yield from _cache_dirs_named(v, root)
    elif isinstance(value, str) and os.sep in value:
        p = Path(os.path.expanduser(value))
        if p.parent.name in TRACE_KINDS and p.parent.parent.resolve() == root.resolve() and p.is_dir():
            yield p


def _eval_store_dirs(run: Path, root: Path) -> Iterator[Path]:
    for settings in sorted((run / "eval").glob("*/*.settings.json")):
        shared = SharedResults.key_dir(root / "eval", json.loads(settings.read_text()))
        if shared.is_dir():
            yield shared


def _copy_tree(src: Path, dst: Path, exclude: Iterable[str] = (), overwrite: bool = False, pack: bool = False) -> int:
    """Copy ``src`` into ``dst`` file by file; a file already there is kept (``overwrite``: kept
    only when it has the same date and size, so a re-export takes what has changed since). ``pack``
    (export): files over :data:`PACK_BYTES` are stored gzip-compressed as ``NAME`` +
    :data:`PACKED`; without it (import) such files are unpacked back to ``NAME``. Returns the
    number of files copied."""
    n = 0
    skip = set(exclude)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        dirnames[:] = [d for d in dirnames if not (rel == Path(".") and d in skip)]
        for name in filenames:
            if name.endswith((".lock", ".tmp")):
                continue
            source = Path(dirpath) / name
            packed = pack and source.stat().st_size > PACK_BYTES
            unpack = not pack and name.endswith(PACKED)
            out_name = name + PACKED if packed else name[: -len(PACKED)] if unpack else name
            target = dst / rel / out_name
            if target.exists():
                a, b = source.stat(), target.stat()
                if not overwrite or (int(a.st_mtime) == int(b.st_mtime) and (packed or a.st_size == b.st_size)):
                    continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{out_name}.{os.getpid()}.part")
            if packed or unpack:
                with (open if packed else gzip.open)(source, "rb") as f, (gzip.open if packed else open)(tmp, "wb") as g:
                    shutil.copyfileobj(f, g)
                shutil.copystat(source, tmp)
            else:
                shutil.copy2(source, tmp)
            tmp.replace(target)
            n += 1
    return n


def export_runs(
    runs: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    extra_caches: Iterable[str] = (),
) -> dict:
    """Copy ``runs`` (run directories, relative to the working directory), the cache entries
    they read and ``extra_caches`` (``KIND/KEY`` under the cache, e.g. ``traces/<key>``) into
    ``out``. Returns ``{"runs": [...], "caches": [...], "files": N}``. One ``ValueError``
    naming a run that is not a run directory or an entry that is not in the cache."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    out = Path(out)
    runs = [Path(r) for r in runs]
    for run in runs:
        if run.is_absolute() or ".." in run.parts:
            raise ValueError(f"run: expected a run directory relative to the working directory, got {str(run)!r}")
        if not ((run / "summary.json").is_file() or (run / ".hydra").is_dir()):
            raise ValueError(f"run: {str(run)!r} is not a run directory (no summary.json or .hydra/)")
    caches: dict[Path, Path] = {}
    for entry in extra_caches:
        rel = Path(entry)
        if len(rel.parts) != 2 or rel.parts[0] not in (*TRACE_KINDS, "eval") or not (root / rel).is_dir():
            raise ValueError(f"cache: expected KIND/KEY of an entry under {root} (KIND one of {[*TRACE_KINDS, 'eval']}), got {entry!r}")
        caches[root / rel] = rel
    for run in runs:
        for record in ("summary.json", "stages.json"):  # stages.json: a fine-tune finished, the run not yet
            if (run / record).is_file():
                for d in _cache_dirs_named(json.loads((run / record).read_text()), root):
                    caches[d] = Path(d.parent.name) / d.name
        for d in _eval_store_dirs(run, root):
            caches[d] = Path("eval") / d.name
    files = 0
    for src, rel in sorted(caches.items(), key=lambda kv: str(kv[1])):
        files += _copy_tree(src, out / "cache" / rel, overwrite=True, pack=True)
    for run in runs:
        files += _copy_tree(run, out / "runs" / run, exclude=RUN_EXCLUDE, overwrite=True, pack=True)
        last = run / "checkpoints" / "last.ckpt"
        if last.is_file() and not (run / "adapter").is_dir():  # a fine-tune that has not finished
            target = out / "runs" / run / "checkpoints" / "last.ckpt"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(last, target)  # the newest one replaces an older carried copy
            files += 1
    return {"runs": [str(r) for r in runs], "caches": sorted(str(r) for r in caches.values()), "files": files}


def import_bundle(bundle: str | os.PathLike, cache_dir: str | os.PathLike | None = None, workdir: str | os.PathLike = ".") -> dict:
    """Put a bundle's caches under ``cache_dir`` and its runs under ``workdir``; files already
    there are kept. Returns ``{"files": N}``. One ``ValueError`` when ``bundle`` is not one."""
    bundle = Path(bundle)
    if not (bundle / "cache").is_dir() and not (bundle / "runs").is_dir():
        raise ValueError(f"bundle: {str(bundle)!r} is not a cache bundle (expected cache/ and runs/ from `export`)")
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    files = 0
    if (bundle / "cache").is_dir():
        files += _copy_tree(bundle / "cache", root)
    if (bundle / "runs").is_dir():
        files += _copy_tree(bundle / "runs", Path(workdir))
    return {"files": files}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lightreasoner.run.cache_bundle", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="copy runs and the caches they read into one directory")
    ex.add_argument("runs", nargs="*", help="run directories (relative), e.g. outputs/NAME")
    ex.add_argument("--to", required=True, help="the bundle directory")
    ex.add_argument("--cache", action="append", default=[], metavar="KIND/KEY", help="a cache entry to carry as well (e.g. traces/<key>)")
    im = sub.add_parser("import", help="put a bundle's caches and runs back in place")
    im.add_argument("bundle")
    for p in (ex, im):
        p.add_argument("--cache-dir", default=None, help="the shared cache (default: LIGHTREASONER_CACHE or ~/.cache/lightreasoner)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "export":
            res = export_runs(args.runs, args.to, args.cache_dir, args.cache)
            print(f"exported {len(res['runs'])} run(s) and {len(res['caches'])} cache entr(ies) to {args.to}: {res['files']} files copied")
        else:
            res = import_bundle(args.bundle, args.cache_dir)
            print(f"imported {args.bundle}: {res['files']} files copied (files already there kept)")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
