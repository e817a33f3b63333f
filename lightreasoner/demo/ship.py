"""Rebuild and check the demo pair shipped with the package (``lightreasoner/demo/shipped/``).

::

    python -m lightreasoner.demo.ship build   # train the default demo config's pair locally
                                              # (build_pair, 1 torch thread) and write it to shipped/
    python -m lightreasoner.demo.ship check   # rebuild it in a temporary directory and compare

``build`` always trains (it never installs the shipped pair), writes ``expert/``, ``amateur/``,
``manifest.json`` and ``SHA256SUMS`` (sha256 of every file of the cached pair, the data splits
included; the splits themselves are not shipped: ``prepare_demo`` regenerates them from the task
config and checks them against the record) and swaps the directory into place at the end.

``check`` verifies the shipped files against ``SHA256SUMS``, rebuilds the pair the same way and
compares every recorded file but ``manifest.json`` (which holds timings, a date and the host):

* **bit-identical**: every weight, config, tokenizer and data file has the shipped sha256
  (expected on the same CPU kind with the same torch and 1 thread); exit 0;
* else **within tolerance**: the largest absolute difference of any weight of either model is at
  most ``WEIGHT_ATOL`` (1e-3) and both validation accuracies are within ``ACCURACY_TOL`` (2
  percentage points, 10 of the 500 problems) of the shipped ones; exit 0;
* else **outside tolerance**; exit 1. Other CPU kinds round float sums differently, and 600
  training steps can amplify that: then this machine does not reproduce the shipped pair, which
  stays the reference (its files are still checked by hash on every install).

One line is printed either way, with the max abs weight difference and both accuracies.

Recorded (AMD EPYC with avx512_bf16, 2 cores shared with other work, torch 2.13.0, 1 thread):
``build`` took 3 min 49 s (expert 169 s, amateur 45 s; key 32860a46fbd080f5, 2.83 MB) and
``check`` then printed ``ship check: OK bit-identical (15 files, sha256 equal); expert validation
37.6% rebuilt vs 37.6% shipped; amateur validation 5.8% rebuilt vs 5.8% shipped``. With the
shipped pair, a cold ``python train.py`` (empty ``$LIGHTREASONER_CACHE``) took 63 s wall on that
machine (install 0.7 s, sampling 17.6 s, distillation 7.4 s, evaluation 26.0 s) instead of
training the pair first (~4 min more). Other CPU kinds (e.g. AVX2-only) were not measured here:
they install the same files, so their cold run pays only sampling, tuning and evaluation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lightreasoner.demo import pair as P

WEIGHT_ATOL = 1e-3
"""Largest absolute weight difference a rebuild may show and still count as the shipped pair."""

ACCURACY_TOL = 0.02
"""Largest difference of either validation accuracy (fraction) a rebuild may show."""

MEMBERS = ("expert", "amateur")


def default_config(threads: int = 1) -> P.DemoConfig:
    """The default demo config (``conf/demo/default.yaml`` == ``DemoConfig()``), built with
    ``threads`` torch threads (``train.py``'s default for the demo is 1)."""
    return P.DemoConfig(num_threads=threads, progress=True, use_shipped=False)


def build_into(out: Path, threads: int = 1, progress: bool = True) -> dict:
    """Train the default pair into ``out`` (a fresh directory), record every file's sha256 in
    ``SHA256SUMS`` and drop the regenerable data splits. Returns the manifest."""
    cfg = default_config(threads)
    cfg.progress = progress
    manifest = P.build_pair(cfg, out)
    P.write_sums(out)
    shutil.rmtree(out / "data")
    return manifest


def cmd_build(target: Path, threads: int) -> int:
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".shipped.tmp-", dir=target.parent))
    t0 = time.perf_counter()
    try:
        manifest = build_into(tmp, threads)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=".shipped.old-", dir=target.parent))
            target.rename(old / "shipped")
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"ship build: key {manifest['key']}, validation expert {_acc(manifest, 'expert')}, amateur "
          f"{_acc(manifest, 'amateur')}; {size / 1e6:.2f} MB in {target} ({time.perf_counter() - t0:.0f}s)")
    return 0


def _acc(manifest: dict, name: str) -> str:
    a = manifest["members"][name]["validation"]["accuracy"]
    return "n/a" if a is None else f"{a:.1%}"


def max_weight_diff(a_dir: Path, b_dir: Path) -> float:
    """Largest absolute difference of any tensor entry between two saved models (inf when their
    tensors differ in names or shapes)."""
    from safetensors.torch import load_file

    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    return max((float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0) for k in a)


def compare(shipped: Path, rebuilt: Path) -> tuple[bool, str]:
    """(ok, one line) for a rebuilt pair (with its ``data/``) against the shipped one."""
    sums = P.read_sums(shipped)
    man_s = json.loads((shipped / "manifest.json").read_text())
    man_r = json.loads((rebuilt / "manifest.json").read_text())
    if man_s["key"] != man_r["key"]:
        return False, f"ship check: FAIL: rebuilt key {man_r['key']} != shipped key {man_s['key']}"
    differ = [rel for rel, h in sorted(sums.items())
              if rel != "manifest.json" and (not (rebuilt / rel).is_file() or P.sha256_file(rebuilt / rel) != h)]
    accs = "; ".join(f"{n} validation {_acc(man_r, n)} rebuilt vs {_acc(man_s, n)} shipped" for n in MEMBERS)
    if not differ:
        return True, f"ship check: OK bit-identical ({len(sums) - 1} files, sha256 equal); {accs}"
    dw = max(max_weight_diff(shipped / n, rebuilt / n) for n in MEMBERS)
    dacc = max(abs((man_r["members"][n]["validation"]["accuracy"] or 0.0) - (man_s["members"][n]["validation"]["accuracy"] or 0.0))
               for n in MEMBERS)
    ok = dw <= WEIGHT_ATOL and dacc <= ACCURACY_TOL
    verdict = "OK within tolerance" if ok else "FAIL outside tolerance"
    return ok, (f"ship check: {verdict} (not bit-identical: {len(differ)} files differ, e.g. {differ[0]}); "
                f"max abs weight diff {dw:.3g} (tol {WEIGHT_ATOL:g}); {accs} (tol {ACCURACY_TOL * 100:g} pp)")


def cmd_check(shipped: Path, threads: int) -> int:
    try:
        P.verify_shipped(shipped)
    except (ValueError, OSError) as e:
        print(f"ship check: FAIL: {e}")
        return 1
    with tempfile.TemporaryDirectory(prefix="lr-ship-check-") as tmp:
        out = Path(tmp) / "pair"
        P.build_pair(P.DemoConfig(num_threads=threads, progress=False, use_shipped=False), out)
        ok, line = compare(shipped, out)
    print(line)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lightreasoner.demo.ship", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["build", "check"])
    ap.add_argument("--dir", type=Path, default=None, help=f"the shipped directory (default {P.SHIPPED_DIR})")
    ap.add_argument("--threads", type=int, default=1, help="torch threads while training (default 1, as train.py)")
    args = ap.parse_args(argv)
    target = args.dir or P.SHIPPED_DIR
    return cmd_build(target, args.threads) if args.command == "build" else cmd_check(target, args.threads)


if __name__ == "__main__":
    sys.exit(main())
