"""The command line before Hydra runs a job (lightreasoner.run.cli, issue 29): every job composed and
checked in-process, a typo answered with the key it meant, a multirun previewed, ``tuned=``
checked against the pair's expert, and what is named is what runs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightreasoner.run.cli import Composer, PreflightError, check_jobs, preflight, split_argv, suggest
from lightreasoner.run.summary import _evaluated_method
from lightreasoner.run.validation import validate

REPO = Path(__file__).resolve().parents[1]


def test_split_argv_separates_overrides_from_hydra_flags():
    overrides, flags = split_argv(["-m", "a=1,2", "--cfg", "job", "b=3", "--info", "--jobs"])
    assert overrides == ["a=1,2", "b=3"]
    assert flags == {"multirun": True, "--cfg": "job", "--info": "all", "jobs": True}


def test_a_mistyped_key_is_one_line_with_the_key_it_meant():
    with pytest.raises(PreflightError, match=r"^selection\.betta: no such key \(did you mean selection\.beta\?\); to add a new key on purpose write \+selection\.betta=0\.3$"):
        check_jobs(["selection.betta=0.3"])
    with pytest.raises(PreflightError, match=r"^sampling\.beta: moved to selection\.beta; write selection\.beta=0\.6$"):
        check_jobs(["sampling.beta=0.6"])  # an old spelling names the key's one home
    with pytest.raises(PreflightError, match=r"^optimizer\.learning_rate: no such key \(did you mean optimizer\.lr\?\)"):
        check_jobs(["optimizer.learning_rate=1e-4"])
    assert suggest("trainer.max_step", ["trainer.max_steps", "trainer.devices"]) == " (did you mean trainer.max_steps?)"


def test_a_sweep_value_without_multirun_says_to_add_m():
    with pytest.raises(PreflightError, match=r"-m"):
        check_jobs(["selection.beta=0.2,0.4"])


def test_a_multirun_is_previewed_job_by_job_without_running(capsys):
    assert preflight(["-m", "selection.beta=0.2,0.4", "seed=0,1", "--cfg", "job"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "4 job(s):"
    assert sorted(line.split(": ", 1)[1] for line in out[1:]) == sorted(
        f"selection.beta={b} seed={s}" for b in ("0.2", "0.4") for s in ("0", "1"))
    assert preflight(["-m", "selection.beta=0.2,-1", "--jobs"]) == 2  # the bad job is named
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: job 1 (selection.beta=-1): selection.beta: expected a number >= 0")


def test_the_amateurs_sweep_runs_the_papers_pair_with_three_different_amateurs():
    out = io.StringIO()
    jobs = check_jobs(["-m", "+sweep=amateurs"], out=out)
    assert len(jobs) == 3
    composer = Composer()
    try:
        cfgs = [composer.compose(job) for job in jobs]
    finally:
        composer.close()
    assert {c.model_pair.expert.name_or_path for c in cfgs} == {"Qwen/Qwen2.5-Math-1.5B"}
    assert len({c.model_pair.amateur.name_or_path for c in cfgs}) == 3
    assert all(c.get("demo") is None and c.dataset.name == "gsm8k" for c in cfgs)


def _adapter(tmp_path: Path, base: dict, **extra) -> Path:
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "lightreasoner.json").write_text(json.dumps({"kind": "lora_adapter", "base": base, **extra}))
    return d


def test_tuned_must_belong_to_the_pairs_expert(tmp_path):
    adapter = _adapter(tmp_path, {"name_or_path": "/somewhere/else", "gguf_file": "other.gguf"})
    composer = Composer()
    try:
        cfg = composer.compose(["experiment=coder_cpu", "stage=evaluate", f"tuned={adapter}"])
        with pytest.raises(ValueError, match=r"^tuned: .* was trained on /somewhere/else/other\.gguf, but this run's expert \(model_pair\.expert\) is .*qwen2\.5-coder-1\.5b-instruct"):
            validate(cfg)
        demo = composer.compose(["stage=evaluate", f"tuned={adapter}"])
        with pytest.raises(ValueError, match=r"^tuned: .* but this run's expert \(model_pair\.expert\) is .*/demo/[0-9a-f]+/expert"):
            validate(demo)
    finally:
        composer.close()


def test_tuned_of_the_same_expert_passes(tmp_path):
    composer = Composer()
    try:
        cfg = composer.compose(["experiment=coder_cpu", "stage=evaluate"])
        expert = OmegaConf.to_container(cfg.model_pair.expert, resolve=True)
        adapter = _adapter(tmp_path, expert)
        cfg = composer.compose(["experiment=coder_cpu", "stage=evaluate", f"tuned={adapter}"])
        validate(cfg)
    finally:
        composer.close()


def test_an_evaluate_only_run_is_labelled_with_the_method_that_trained_the_adapter(tmp_path):
    cfg = OmegaConf.create({"stage": "evaluate", "tuned": str(_adapter(tmp_path, {"name_or_path": "x"}, method="sft"))})
    assert _evaluated_method(cfg) == "sft"
    old = tmp_path / "old"
    old.mkdir()
    (old / "adapter").mkdir()
    (old / "adapter" / "lightreasoner.json").write_text(json.dumps({"kind": "lora_adapter", "selection": {"solutions_accepted": 3}}))
    assert _evaluated_method(OmegaConf.create({"stage": "evaluate", "tuned": str(old / "adapter")})) == "sft"
    assert _evaluated_method(OmegaConf.create({"stage": "all", "tuned": None})) is None


def test_the_command_line_answers_before_the_heavy_imports(tmp_path):
    """--cfg job, a typo and a cross-group validation error never import Lightning (the slow part),
    through train.py and through ``python -m lightreasoner [train]``; ``--cfg job`` and the
    command's ``--help`` import no torch at all."""
    run = {"train.py": "runpy.run_path('train.py', run_name='__main__')",
           "lightreasoner": "runpy.run_module('lightreasoner', run_name='__main__', alter_sys=True)"}
    code = ("import sys, runpy; sys.argv=[{name!r}, *sys.argv[1:]]; rc = 0\n"
            "try:\n    {run}\n"
            "except SystemExit as e:\n    rc = e.code or 0\n"
            "print('lightning' in sys.modules, 'torch' in sys.modules, rc, file=sys.stderr)\n")
    cases = [("train.py", args, rc) for args, rc in (
        (["--cfg", "job"], 0), (["selection.betta=1"], 2), (["model_pair=coder_cpu"], 2), (["eval.models=[tunned]"], 2))]
    cases += [("lightreasoner", ["train", "--cfg", "job"], 0), ("lightreasoner", ["--help"], 0), ("lightreasoner", ["selection.betta=1"], 2)]
    for name, args, rc in cases:
        p = subprocess.run([sys.executable, "-c", code.format(name=name, run=run[name]), *args], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
        lightning, torch, got = p.stderr.strip().splitlines()[-1].split()
        assert (lightning, got) == ("False", str(rc)), (name, args, p.stderr[-1500:])
        assert torch == "False" or "--cfg" not in args and "--help" not in args, (name, args)


def test_the_lightreasoner_command_dispatches_and_lists_its_commands(capsys):
    from lightreasoner.run.app import COMMANDS, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {command} " in out for command in ("train", "report", "diagnose", "bundle")), out
    assert main(["reprot", "x"]) == 2  # a bare word is neither a command nor an override
    assert capsys.readouterr().err.startswith("error: reprot: no such command")
    assert main(["model_pair=nope"]) == main(["train", "model_pair=nope"]) == 2  # train is the default command
    assert main(["diagnose", "--bogus"]) == 2  # each command's own main reads the rest of the line
    assert "--bogus: not a flag of the diagnostic" in capsys.readouterr().err
    for command in ("report", "bundle"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--bogus"])
        assert exit_.value.code == 2 and f"usage: python -m {COMMANDS[command][0]}" in capsys.readouterr().err
