"""The package without the checkout (issue 33 §5): the built wheel carries the configs and the
demo's shipped pair, and the ``lightreasoner`` command composes a job from the installed copy,
run from a directory outside the checkout.

The wheel is built offline, from a clean copy of what a build reads (``pyproject.toml``,
``README.md``, ``conf/``, ``lightreasoner/``), so that no stale ``build/`` of the checkout leaks
into it and nothing is written in the checkout; it is installed with ``pip --target`` into a
temporary directory whose ``PYTHONPATH`` puts it ahead of the editable install, dependencies
coming from the running environment. A second test installs the copy with ``pip install -e``
in a fresh environment. About 25 s in all."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def _source(src: Path) -> Path:
    """A clean copy of what a build reads, at ``src``."""
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("conf", "lightreasoner"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(wheel, site, workdir, env)``: the built wheel, its ``--target`` install, an empty
    working directory outside the checkout and the environment that runs the installed copy."""
    tmp = tmp_path_factory.mktemp("install")
    source = _source(tmp / "lightreasoner")
    subprocess.run([*PIP, "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist")],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("lightreasoner-*.whl")
    site = tmp / "site"
    subprocess.run([*PIP, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    workdir = tmp / "work"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    return wheel, site, workdir, env


def _run(args: list[str], workdir: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_carries_the_configs_the_demo_pair_and_every_subpackage(installed):
    wheel = installed[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lightreasoner/conf/train.yaml" in names
    conf = {f"lightreasoner/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*") if p.is_file()}
    assert conf <= names, sorted(conf - names)  # every file of the checkout's conf/, at the same place below lightreasoner/conf/
    shipped = REPO / "lightreasoner" / "demo" / "shipped"
    files = {p.relative_to(REPO).as_posix() for p in shipped.rglob("*") if p.is_file()}
    assert {"lightreasoner/demo/shipped/SHA256SUMS", "lightreasoner/demo/shipped/manifest.json",
            "lightreasoner/demo/shipped/expert/model.safetensors", "lightreasoner/demo/shipped/amateur/model.safetensors"} <= files
    assert files <= names, sorted(files - names)
    packages = {p.parent.relative_to(REPO).as_posix() + "/__init__.py" for p in (REPO / "lightreasoner").rglob("__init__.py")}
    assert packages <= names, sorted(packages - names)  # pyproject.toml names every subpackage
    assert "lightreasoner/__main__.py" in names


def test_the_installed_command_composes_the_demo_job_from_its_own_configs(installed):
    _, site, workdir, env = installed
    p = _run([sys.executable, "-m", "lightreasoner", "--help"], workdir, env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert all(f"\n  {command} " in p.stdout for command in ("train", "report", "diagnose", "bundle")), p.stdout
    assert f"config tree: {site / 'lightreasoner' / 'conf'}" in p.stdout  # the installed copy, not the checkout's

    p = _run([sys.executable, "-m", "lightreasoner", "train", "--cfg", "job"], workdir, env)
    assert p.returncode == 0, p.stderr[-2000:]
    job = yaml.safe_load(p.stdout)
    assert job["model_pair"]["name"] == "demo-tiny" and job["dataset"]["name"] == "demo" and job["stage"] == "all"
    checkout = _run([sys.executable, str(REPO / "train.py"), "--cfg", "job"], workdir, {**os.environ})
    assert checkout.returncode == 0 and p.stdout == checkout.stdout  # the same config as python train.py composes
    assert sorted(os.listdir(workdir)) == []  # printing the config makes no run directory

    p = _run([sys.executable, "-m", "lightreasoner", "model_pair=nope"], workdir, env)
    assert p.returncode == 2 and p.stderr.startswith("error: model_pair=nope: no such option"), p.stderr[-2000:]

    script = site / "bin" / "lightreasoner"  # the console entry point pip wrote
    p = _run([str(script), "--help"], workdir, env)
    assert p.returncode == 0 and "\n  report " in p.stdout, p.stderr[-2000:]


def test_an_editable_install_composes_from_the_checkouts_conf(tmp_path):
    """``pip install -e .`` in a fresh environment (its dependencies: the running one's, by a
    ``.pth`` line): the command reads the source tree's top-level ``conf/``, edits included."""
    source = _source(tmp_path / "lightreasoner")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), *PIP[1:], "install", "-e", str(source), "--no-deps", "--no-build-isolation", "--no-index"],
                   check=True, capture_output=True, text=True, timeout=300)
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = _run([str(env_dir / "bin" / "lightreasoner"), "--help"], workdir, env)
    assert p.returncode == 0 and f"config tree: {source / 'conf'}" in p.stdout, (p.stdout, p.stderr[-2000:])
    (source / "conf" / "experiment" / "demo.yaml").write_text((source / "conf" / "experiment" / "demo.yaml").read_text() + "seed: 7\n")
    p = _run([str(python), "-m", "lightreasoner", "train", "--cfg", "job"], workdir, env)
    assert p.returncode == 0 and yaml.safe_load(p.stdout)["seed"] == 7, p.stderr[-2000:]
