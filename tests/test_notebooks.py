"""The notebooks run top to bottom on a small real trace cache."""

from __future__ import annotations

import json
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_inspect_traces_notebook_runs(tmp_path, monkeypatch, tiny_pair_dirs, capsys):
    from lightreasoner.models.spec import ModelSpec
    from lightreasoner.data.records import Problem
    from lightreasoner.sampling.sampler import run_sampling

    problems = [Problem(id=f"t/train/{i}", question=f"What is {i}+{i}?", answer=str(2 * i), answer_type="numeric") for i in range(4)]
    run_sampling(ModelSpec(tiny_pair_dirs["expert"], device="cpu"), ModelSpec(tiny_pair_dirs["amateur"], device="cpu"),
                 problems, {"name": "t"}, {"max_new_tokens": 8, "batch_size": 4}, tmp_path,
                 trainer_kwargs={"accelerator": "cpu", "devices": 1})
    monkeypatch.setenv("LIGHTREASONER_CACHE", str(tmp_path))
    nb = json.loads((NOTEBOOKS / "inspect_traces.ipynb").read_text())
    scope: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "inspect_traces.ipynb", "exec"), scope)
    out = capsys.readouterr().out
    assert "4 traces" in out and "beta=0.4" in out and "quantiles" in out
    assert "no tokenizer" not in out
