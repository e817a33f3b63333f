"""Generation engines side by side: the same problems, the same expert, each engine in its own
process (clean memory figures), compared with transformers fp32.

    python bench/generation.py --problems 50 --max-new-tokens 384              # Coder-1.5B, GSM8K test
    python bench/generation.py --engines hf,hf_bf16 --problems 16               # without vLLM
    python bench/generation.py --tiny --problems 8 --max-new-tokens 16          # smoke run
    python bench/generation.py --vllm-python /path/to/venv-with-vllm/bin/python # vLLM from its own venv
    python bench/generation.py --keep outputs/bench_generation   # each finished arm kept; a rerun reuses it
    VLLM_LD_PRELOAD=".../libtcmalloc_minimal.so.4:.../libiomp5.so" python bench/generation.py  # preloads for vLLM's arm only

Per engine: start-up (load + build), generation time and tokens/s, peak memory of the engine's
processes, accuracy on the problems, and agreement with transformers fp32 (identical first 64
tokens, identical final answers). Prints the ratios against fp32 measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ENGINES, EXPERT_GGUF, MODELS, PeakRSS, tiny_pair  # noqa: E402

from lightreasoner.core.files import atomic_write_json  # noqa: E402


def run_one(engine_name: str, spec_dict: dict, n: int, max_new: int, batch_size: int, out: Path) -> None:
    """Runs in its own process: build the engine, generate, score, write JSON."""
    from lightreasoner.data.answers import extract_answer, is_equivalent
    from lightreasoner.data.benchmarks import dataset_config, load_problems
    from lightreasoner.generation import GenerationSettings, build_engine
    from lightreasoner.models.spec import ModelSpec, load_model, load_tokenizer
    from lightreasoner.data.prompts import EVAL_SYSTEM, encode_prompts

    spec = ModelSpec.from_any(spec_dict)
    problems = load_problems(dataset_config("gsm8k"), split="test", max_problems=n)
    with PeakRSS(children=True) as mem:
        t0 = time.perf_counter()
        tok = load_tokenizer(spec, "expert")
        engine = build_engine(ENGINES[engine_name], lambda: load_model(spec, "expert"), tok, spec=spec)
        startup = time.perf_counter() - t0
        prompts = encode_prompts(tok, [p.question for p in problems], EVAL_SYSTEM)
        t1 = time.perf_counter()
        gens = engine.generate(prompts, GenerationSettings(max_new), batch_size, progress=False)
        gen_s = time.perf_counter() - t1
    answers = [extract_answer(g.text, "numeric") for g in gens]
    correct = [bool(is_equivalent(a, p.answer, "numeric")) for a, p in zip(answers, problems)]
    tokens = sum(g.num_tokens for g in gens)
    atomic_write_json(out, {
        "engine": engine_name, "identity": engine.identity(), "startup_s": round(startup, 1), "gen_s": round(gen_s, 1),
        "tokens": tokens, "tokens_per_s": round(tokens / gen_s, 2), "peak_rss_gib": round(mem.gib, 2),
        "accuracy": sum(correct) / len(correct), "correct": correct, "answers": answers,
        "first64": [g.token_ids[:64] for g in gens], "cut_off": sum(g.cut_off for g in gens) / len(gens),
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="hf,hf_bf16,vllm", help="comma-separated, hf first (the reference)")
    ap.add_argument("--problems", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--tiny", action="store_true", help="a tiny random model instead of Coder-1.5B")
    ap.add_argument("--vllm-python", default=sys.executable, help="the Python whose environment has vLLM")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--keep", type=Path, help="keep each engine's figures in this folder; a rerun with the same settings reuses "
                    "the engines already measured (a killed run resumes at the engine it was in)")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    ap.add_argument("--_spec", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        run_one(args._one, json.loads(args._spec), args.problems, args.max_new_tokens, args.batch_size, Path(args._out))
        return
    if args.tiny:
        spec = tiny_pair(Path(tempfile.mkdtemp()))[0].to_dict()
    else:
        spec = {"name_or_path": str(MODELS), "gguf_file": EXPERT_GGUF, "dtype": "float32", "device": "auto"}
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if engines[0] != "hf":
        engines = ["hf"] + [e for e in engines if e != "hf"]
    results = {}
    settings = {"spec": spec, "problems": args.problems, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    keep = args.keep or Path(tempfile.mkdtemp())
    keep.mkdir(parents=True, exist_ok=True)
    for name in engines:
        out = keep / f"{name}.json"
        if out.exists():
            kept = json.loads(out.read_text())
            if kept.get("settings") == settings:
                results[name] = kept
                print(f"{name}: reused from {out}", flush=True)
                continue
        python = args.vllm_python if name.startswith("vllm") else sys.executable
        cmd = [python, __file__, "--_one", name, "--_spec", json.dumps(spec), "--_out", str(out), "--problems", str(args.problems),
               "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        if name.startswith("vllm") and os.environ.get("VLLM_LD_PRELOAD"):  # tcmalloc + libiomp5 for vLLM's CPU build only
            env["LD_PRELOAD"] = os.environ["VLLM_LD_PRELOAD"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})")
            continue
        r = results[name] = json.loads(out.read_text())
        r["process_s"] = round(time.perf_counter() - t0, 1)
        r["settings"] = settings
        atomic_write_json(out, r)
        print(f"{name}: {r['tokens_per_s']} tok/s, start-up {r['startup_s']} s, accuracy {r['accuracy']:.3f}, peak {r['peak_rss_gib']} GiB", flush=True)
    ref = results.get("hf")
    rows = []
    for name, r in results.items():
        same_tokens = sum(a == b for a, b in zip(r["first64"], ref["first64"])) / len(ref["first64"]) if ref else None
        same_answers = sum(a == b for a, b in zip(r["answers"], ref["answers"])) if ref else None
        rows.append({
            "engine": name, "precision": r["identity"].get("dtype"), "tok/s": r["tokens_per_s"],
            "x hf fp32": round(r["tokens_per_s"] / ref["tokens_per_s"], 2) if ref else None, "start-up s": r["startup_s"],
            "gen s": r["gen_s"], "peak GiB": r["peak_rss_gib"], "accuracy": round(r["accuracy"], 3), "cut off": round(r["cut_off"], 3),
            "first 64 tokens = fp32": round(same_tokens, 3) if same_tokens is not None else None,
            "final answers = fp32": f"{same_answers}/{len(r['answers'])}" if same_answers is not None else None,
        })
    cols = list(rows[0]) if rows else []
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "problems": args.problems, "max_new_tokens": args.max_new_tokens}, indent=2))


if __name__ == "__main__":
    main()
