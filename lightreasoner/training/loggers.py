"""The experiment logger of one run, from the ``logger`` config group.

A run (one Hydra job) builds its logger once (:func:`build_logger`), every stage logs into it,
and the run finishes it (:func:`finish_logger`) at its end, also when it fails — so each job of
a multirun is its own W&B run, with its own flattened config and summary. W&B falls back to
offline mode when this machine is not logged in (sync later with ``wandb sync``); jobs of one
multirun share a W&B group (the sweep directory) and are named after their job number and
overrides.

W&B media (:func:`log_trace_media`, :func:`log_eval_samples`): the KL histogram of the scored
traces, the kept-fraction-vs-beta curve, a table of kept steps (context, chosen token, top
candidates with both models' probabilities, KL) and a table of evaluation samples.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightreasoner.core.config import short_name

log = logging.getLogger("lightreasoner")

MEDIA_BETAS = tuple(round(0.1 * i, 1) for i in range(0, 21))
"""Betas of the kept-fraction curve (0 to 2)."""
KEPT_STEP_ROWS = 200
"""Rows of the kept-steps table."""
EVAL_SAMPLE_ROWS = 50
"""Evaluation samples per model and benchmark in the samples table."""


def wandb_logged_in() -> bool:
    """True when an API key is configured for api.wandb.ai (``~/.netrc``)."""
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def is_wandb(logger) -> bool:
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def job_identity(cfg: DictConfig) -> dict:
    """``{"multirun", "sweep", "name"}`` of this Hydra job (defaults outside Hydra)."""
    if not HydraConfig.initialized():
        return {"multirun": False, "sweep": None, "name": None}
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:  # the job's sub-directory: its number and swept overrides (conf/hydra/default.yaml)
        name = Path(hc.runtime.output_dir).name
    else:
        name = short_name(hc.job.override_dirname) if hc.job.override_dirname else None
    sweep = str(hc.sweep.dir).replace(os.sep, "_").strip("_") if multirun else None
    return {"multirun": multirun, "sweep": sweep, "name": name}


def flat_config(cfg: DictConfig) -> dict:
    """The resolved config as ``{"selection.beta": 0.4, ...}`` (lists as JSON text)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = json.dumps(node) if isinstance(node, list) else node

    walk(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), "")
    return out


def build_logger(cfg: DictConfig):
    """The run's Lightning logger, or ``False`` when ``logger`` is ``none``. Build it once per run."""
    if cfg.logger is None or cfg.logger.get("_target_") is None:
        return False
    kwargs: dict[str, Any] = {}
    if "WandbLogger" in str(cfg.logger._target_):
        if not cfg.logger.get("offline", False) and not (
            os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") or wandb_logged_in()
        ):
            log.warning("logger: wandb is not logged in here; logging offline (sync later with `wandb sync`)")
            kwargs["offline"] = True
        job = job_identity(cfg)
        if cfg.logger.get("group") is None:
            kwargs["group"] = job["sweep"] or str(cfg.model_pair.name)
        if cfg.logger.get("name") is None and job["name"]:
            kwargs["name"] = job["name"]
        if cfg.logger.get("job_type") is None:
            kwargs["job_type"] = str(cfg.stage)
        _finish_stray_wandb_run()  # a job never logs into an earlier job's run
    logger = instantiate(cfg.logger, **kwargs)
    if is_wandb(logger):
        logger.log_hyperparams(flat_config(cfg))
    return logger


def _finish_stray_wandb_run() -> None:
    import wandb

    if wandb.run is not None:
        log.warning("logger: finishing a W&B run left open by an earlier job in this process")
        wandb.run.finish()


def summary_metrics(summary: Mapping) -> dict:
    """The flat metrics of a run's summary an ablation table needs (W&B run summary)."""
    out: dict[str, Any] = {}
    for r in summary.get("results") or []:
        key = f"eval/{r['model']}/{r['benchmark']}"
        out[f"{key}/accuracy"] = r["accuracy"]
        out[f"{key}/ci95_lo"], out[f"{key}/ci95_hi"] = r["ci95"]
        out[f"{key}/cut_off_frac"] = r["cut_off_frac"]
        for k in ("accuracy_flexible", "no_answer_frac", "hedging_frac", "off_format_frac"):  # strict vs flexible, format rates
            if r.get(k) is not None:
                out[f"{key}/{k}"] = r[k]
        if r.get("ci95_flexible"):
            out[f"{key}/ci95_flexible_lo"], out[f"{key}/ci95_flexible_hi"] = r["ci95_flexible"]
    for c in summary.get("comparisons") or []:
        if "refused" in c:
            continue
        key = f"eval/{c['model']}/{c['benchmark']}/gain_vs_{c['baseline']}"
        out[key] = c["diff"]
        out[f"{key}/ci95_lo"], out[f"{key}/ci95_hi"] = c["ci95"]
        out[f"{key}/mcnemar_p"] = c["mcnemar_p"]
        for k in ("flexible", "format_share"):  # the flexible gain; the format share = strict gain - flexible gain
            value = c.get("diff_flexible" if k == "flexible" else k)
            if value is not None:
                name = f"eval/{c['model']}/{c['benchmark']}/{'gain_flexible' if k == 'flexible' else k}_vs_{c['baseline']}"
                out[name] = value
                out[f"{name}/ci95_lo"], out[f"{name}/ci95_hi"] = c[f"ci95_{k}"]
    for k, v in (summary.get("selection") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"selection/{k}"] = v
    for k, v in (summary.get("wall_s") or {}).items():
        out[f"wall_s/{k}"] = v
    if summary.get("wall_s"):
        out["wall_s/total"] = round(sum(summary["wall_s"].values()), 2)
    eff = summary.get("efficiency") or {}
    for k in ("training_problems", "problems_sampled", "tokens_generated"):
        if eff.get(k) is not None:
            out[f"efficiency/{k}"] = eff[k]
    for k, v in (eff.get("sampling") or {}).items():
        if v is not None:
            out[f"efficiency/sampling_{k}"] = v
    for k in ("tuned_tokens", "objective", "status", "method"):
        if summary.get(k) is not None:
            out[k] = summary[k]
    return out


def finish_logger(logger, summary: Mapping | None = None, failed: bool = False) -> None:
    """Write the run summary into the logger and finish it (W&B: the run ends here, marked
    failed when the job failed, so the next job of a multirun starts its own run)."""
    if not logger:
        return
    if is_wandb(logger):
        run = logger.experiment
        if summary is not None and hasattr(run, "summary"):
            run.summary.update(summary_metrics(summary))
        if hasattr(run, "finish"):
            run.finish(exit_code=1 if failed else 0)
        return
    logger.finalize("failed" if failed else "success")


# --------------------------------------------------------------------------- media (W&B)


def _kept_fraction_curve(records: Sequence[Mapping], first_step: int) -> list[list[float]]:
    from lightreasoner.core import contrast

    total = sum(int(r["kl"].numel()) for r in records) or 1
    rows = []
    for beta in MEDIA_BETAS:
        kept = sum(int(contrast.keep_steps(r["kl"], beta, first_step).sum()) for r in records)
        rows.append([beta, kept / total])
    return rows


def _kept_step_rows(records: Sequence[Mapping], tokenizer, beta: float, alpha: float, first_step: int) -> list[list]:
    from lightreasoner.core import contrast

    rows: list[list] = []
    for rec in records:
        keep = contrast.keep_steps(rec["kl"], beta, first_step).nonzero().flatten().tolist()
        trace = rec["trace_ids"].tolist()
        off = rec["cand_offsets"]
        for t in keep:
            a, b = int(off[t]), int(off[t + 1])
            pe, pa = rec["cand_logp_e"][a:b].exp(), rec["cand_logp_a"][a:b].exp()
            plausible = rec["cand_logp_e"][a:b] >= float(rec["max_logp_e"][t]) + math.log(alpha)
            cands = [
                f"{tokenizer.decode([int(i)])!r} (pE {float(e):.2f}, pA {float(q):.2f})"
                for i, e, q, ok in zip(rec["cand_ids"][a:b].tolist(), pe, pa, plausible.tolist())
                if ok
            ][:5]
            context = tokenizer.decode(trace[:t], skip_special_tokens=True)[-80:]
            rows.append([rec["problem_id"], t, context, tokenizer.decode([trace[t]]), "; ".join(cands), float(rec["kl"][t])])
            if len(rows) >= KEPT_STEP_ROWS:
                return rows
    return rows


def log_trace_media(logger, records: Sequence[Mapping], tokenizer, beta: float, alpha: float, first_step: int) -> None:
    """KL histogram, kept-fraction-vs-beta curve and kept-steps table of the scored traces (W&B)."""
    if not is_wandb(logger) or not records:
        return
    import numpy as np
    import wandb

    kl = np.concatenate([r["kl"].float().numpy() for r in records])
    curve = wandb.Table(columns=["beta", "kept_fraction"], data=_kept_fraction_curve(records, first_step))
    steps = wandb.Table(
        columns=["problem_id", "step", "context", "chosen token", "plausible candidates", "KL"],
        data=_kept_step_rows(records, tokenizer, beta, alpha, first_step),
    )
    logger.experiment.log(
        {
            "sampling/kl_histogram": wandb.Histogram(np.clip(kl, 0, 10)),
            "sampling/kept_fraction_vs_beta": wandb.plot.line(curve, "beta", "kept_fraction", title="kept fraction vs beta"),
            "sampling/kept_steps": steps,
        }
    )


def log_eval_samples(logger, report: Mapping) -> None:
    """The first evaluation samples of every model and benchmark as a W&B table."""
    if not is_wandb(logger):
        return
    import wandb

    cols = ["model", "benchmark", "id", "question", "gold", "generated", "extracted", "correct", "cut_off"]
    data = []
    for r in report.get("results", []):
        path = Path(r.get("path", ""))
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= EVAL_SAMPLE_ROWS:
                    break
                row = json.loads(line)
                data.append([r["model"], r["benchmark"]] + [row.get(c) for c in cols[2:]])
    logger.experiment.log({"eval/samples": wandb.Table(columns=cols, data=data)})
