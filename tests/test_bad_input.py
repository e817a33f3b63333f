"""Every bad input is one clear error (issue 15): a table of inputs and the message each gives.

Config cases are Hydra overrides applied to a composed config and checked by
``validation.validate`` in-process (the group's own settings class says what is wrong, before any
work); data files go through ``benchmarks.load_problems``; models through ``models``; the
cache directory and a full disk through ``main.run`` on a tiny pair. A handful of cases run
``python train.py`` to prove the command line prints one line ``error: ...`` on stderr, exits
with 2 and leaves nothing half-written. The trace cache's damage cases: tests/test_cache_damage.py.
"""

from __future__ import annotations

import builtins
import copy
import errno
import functools
import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

import lightreasoner.core.config  # noqa: F401  (registers the resolvers)
from lightreasoner.core import files
from lightreasoner.data.benchmarks import load_problems
from lightreasoner.core.config import unknown_group_option
from lightreasoner.models.spec import ModelSpec, check_pair_tokenizers, load_model, load_tokenizer
from lightreasoner.run.main import run
from lightreasoner.run.validation import validate

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
OUT = "/tmp/lr-bad-input-never-written"


# --------------------------------------------------------------------------- config keys


@functools.cache
def _composed(overrides: tuple[str, ...]):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = OUT
    return cfg


def configured(overrides: list[str], base: tuple[str, ...] = ()):
    """The composed config (``base`` overrides) with ``overrides`` applied as Hydra parses them
    (one compose per base: composing per case would cost ~0.5 s each)."""
    cfg = copy.deepcopy(_composed(base))
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        with open_dict(cfg):
            if o.is_add():
                OmegaConf.update(cfg, key, o.value(), merge=True, force_add=True)
            else:
                absent = object()  # as Hydra: only an existing key can be changed without "+"
                assert OmegaConf.select(cfg, key, default=absent, throw_on_missing=False) is not absent, key
                OmegaConf.update(cfg, key, o.value(), merge=False)
    return cfg


CODER = ("experiment=coder_cpu",)  # a pair given by path (the demo's is filled in at run time)

CONFIG_CASES = [
    # (overrides, base, exception, message fragment)
    (["stage=train"], (), ValueError, r"^stage: expected one of \['sample', 'distill', 'evaluate', 'all'\], got 'train'$"),
    (["seed=abc"], (), ValueError, r"^seed: expected an integer, got 'abc'$"),
    (["+bogus=1"], (), ValueError, r"^unknown top-level key\(s\) \['bogus'\]; expected some of \["),
    # sampling (SamplingSettings / SelectionSettings)
    (["selection.beta=-1"], (), ValueError, r"^selection\.beta: expected a number >= 0"),
    (["selection.beta=nan"], (), ValueError, r"^selection\.beta: expected a number >= 0"),
    (["selection.beta=abc"], (), ValueError, r"^selection\.beta: expected a number >= 0 .*got 'abc'$"),
    (["selection.alpha=1.5"], (), ValueError, r"^selection\.alpha: expected 0 < alpha <= 1 \(or 0: no tail filter\), got 1\.5$"),
    (["selection.alpha=0.001"], (), ValueError, r"^selection\.alpha=0\.001 is below alpha_min=0\.01"),
    (["selection.first_step=1.5"], (), ValueError, r"^selection\.first_step: expected an integer >= 0, got 1\.5$"),
    (["sampling.max_new_tokens=0"], (), ValueError, r"^sampling\.max_new_tokens: expected an integer >= 1, got 0$"),
    (["sampling.temperature=0"], (), ValueError, r"^sampling\.temperature: expected a number > 0"),
    (["sampling.top_p=2"], (), ValueError, r"^sampling\.top_p: expected 0 < top_p <= 1"),
    (["sampling.alpha_min=0"], (), ValueError, r"^sampling\.alpha_min: expected 0 < alpha_min <= 1"),
    (["sampling.batch_size=true"], (), ValueError, r"^sampling\.batch_size: expected an integer >= 1, got True$"),
    (["sampling.do_sample=maybe"], (), ValueError, r"^sampling\.do_sample: expected true or false, got 'maybe'$"),
    (["sampling.seed=abc"], (), ValueError, r"^sampling\.seed: expected an integer or null"),
    (["+sampling.bogus=1"], (), ValueError, r"^sampling: unknown field\(s\) \['bogus'\]"),
    # distill (DistillSettings)
    (["distill.packing=maybe"], (), ValueError, r"^distill\.packing: expected true or false"),
    (["distill.steps_per_batch=0"], (), ValueError, r"^distill\.steps_per_batch: expected an integer >= 1"),
    (["distill.padding_side=middle"], (), ValueError, r"^distill\.padding_side: expected 'right' or 'left'"),
    (["distill.num_workers=-1"], (), ValueError, r"^distill\.num_workers: expected an integer >= 0"),
    (["distill.checkpoint_every=0"], (), ValueError, r"^distill\.checkpoint_every: expected an integer >= 1 or null"),
    (["distill.import_published=/nonexistent.jsonl"], (), ValueError, r"^distill\.import_published: .*'/nonexistent\.jsonl' does not exist"),
    (["+distill.bogus=1"], (), ValueError, r"^distill: unknown field\(s\) \['bogus'\]"),
    # peft (distill.lora_config)
    (["peft.r=0"], (), ValueError, r"^peft\.r: expected an integer >= 1, got 0$"),
    (["peft.r=abc"], (), ValueError, r"^peft\.r: expected an integer >= 1, got 'abc'$"),
    (["peft.alpha=abc"], (), ValueError, r"^peft\.alpha: expected a number > 0"),
    (["peft.dropout=1.5"], (), ValueError, r"^peft\.dropout: expected 0 <= dropout < 1"),
    (["peft.target_modules=[]"], (), ValueError, r"^peft\.target_modules: expected a list of module names"),
    (["peft.bias=some"], (), ValueError, r"^peft\.bias: expected one of"),
    (["+peft.bogus=1"], (), ValueError, r"^peft: unknown field\(s\) \['bogus'\]"),
    # optimizer / scheduler / trainer (distill.check_*)
    (["optimizer.lr=-1"], (), ValueError, r"^optimizer\.lr: expected a number > 0, got -1$"),
    (["optimizer.lr=abc"], (), ValueError, r"^optimizer\.lr: expected a number > 0, got 'abc'$"),
    (["optimizer.weight_decay=-1.0"], (), ValueError, r"^optimizer: torch\.optim\.AdamW rejects .*weight_decay"),
    (["+optimizer.bogus=1"], (), ValueError, r"^optimizer: cannot build torch\.optim\.AdamW .*unexpected keyword argument 'bogus'"),
    (["scheduler.type=step"], (), ValueError, r"^scheduler\.type: expected one of"),
    (["scheduler.warmup_steps=-1"], (), ValueError, r"^scheduler\.warmup_steps: expected an integer >= 0"),
    (["+scheduler.bogus=1"], (), ValueError, r"^scheduler: unknown field\(s\) \['bogus'\]"),
    (["callbacks.lr_monitor.logging_interval=hour"], (), ValueError, r"^callbacks\.lr_monitor\.logging_interval: expected one of 'step', 'epoch' or null, got 'hour'$"),
    (["trainer.max_steps=0"], (), ValueError, r"^trainer\.max_steps: expected an integer >= 1, got 0$"),
    (["trainer.max_steps=abc"], (), ValueError, r"^trainer\.max_steps: expected an integer >= 1, got 'abc'$"),
    (["trainer.accumulate_grad_batches=0"], (), ValueError, r"^trainer\.accumulate_grad_batches: expected an integer >= 1"),
    (["trainer.precision=fp8"], (), ValueError, r"^trainer\.precision: expected one of"),
    (["trainer.accelerator=quantum"], (), ValueError, r"^trainer\.accelerator: expected one of"),
    (["trainer.devices=0"], (), ValueError, r"^trainer\.devices: expected an integer >= 1"),
    (["+trainer.bogus=1"], (), ValueError, r"^trainer: unknown field\(s\) \['bogus'\]"),
    # method (built from its _target_, validated in __post_init__)
    (["+method.bogus=1"], (), ValueError, r"^method: unknown field\(s\) \['bogus'\]; expected some of"),
    (["+sampling.beta=0.6"], (), ValueError, r"^sampling\.beta: moved to selection\.beta$"),
    (["selection.target=nope"], (), ValueError, r"^selection\.target: expected one of \['contrast', 'expert'\], got 'nope'$"),
    (["selection.rule=nope"], (), ValueError, r"^selection\.rule: expected one of \['answer_span', 'expert_entropy', 'kl', 'random', 'top_fraction'\], got 'nope'$"),
    (["selection.junk_pe=1"], (), ValueError, r"^selection\.junk_pe: expected 0 < junk_pe < 1, got 1$"),
    (["method.samples_per_problem=0"], ("method=sft",), ValueError, r"^method\.samples_per_problem: expected an integer >= 1"),
    (["method._target_=nope.Nope"], (), ValueError, r"^method\._target_: cannot import 'nope\.Nope'$"),
    # generation
    (["generation.dtype=fp8"], (), ValueError, r"^generation\.dtype: expected one of"),
    (["+generation.bogus=1"], (), ValueError, r"^generation: unknown field\(s\) \['bogus'\] for HFEngine"),
    # dataset (benchmarks.check_dataset_config)
    (["dataset.format=nope"], (), ValueError, r"^dataset\.format: unknown format 'nope'"),
    (["dataset.answer_type=nope"], (), ValueError, r"^dataset\.answer_type: expected one of \['numeric', 'latex', 'asdiv', 'choice'\]"),
    (["dataset.split=nope"], (), ValueError, r"^dataset\.split: no file for split 'nope' \(files: \['test', 'train', 'validation'\]\) and no hub copy$"),
    (["dataset.max_problems=abc"], (), ValueError, r"^dataset\.max_problems: expected an integer"),
    (["dataset.shuffle=maybe"], (), ValueError, r"^dataset\.shuffle: expected true or false"),
    (["+dataset.bogus=1"], (), ValueError, r"^dataset: unknown field\(s\) \['bogus'\]"),
    # eval (EvalSettings, the benchmarks' splits)
    (["eval.batch_size=0"], (), ValueError, r"^eval\.batch_size: expected an integer >= 1"),
    (["eval.max_problems=-1"], (), ValueError, r"^eval\.max_problems: expected an integer >= 1 or null"),
    (["eval.models=[]"], (), ValueError, r"^eval\.models: no model to evaluate$"),
    (["eval.benchmarks=[gsm9k]"], (), ValueError, r"^eval\.benchmarks: unknown benchmark 'gsm9k'"),
    (["eval.prompt_template=nope"], (), ValueError, r"^eval\.prompt_template: expected null"),
    (["eval.stop_tokens=abc"], (), ValueError, r"^eval\.stop_tokens: expected a list of token strings"),
    (["eval.verify_timeout_s=0"], (), ValueError, r"^eval\.verify_timeout_s: expected a number > 0"),
    (["+eval.bogus=1"], (), ValueError, r"^eval: unknown field\(s\) \['bogus'\]"),
    (["eval.split=validation"], CODER, ValueError, r"^eval\.split: benchmark 'gsm8k' has no 'validation' split \(it has \['test', 'train'\]\)$"),
    # model pair (ModelSpec values; a missing checkpoint: see test_model_paths below)
    (["model_pair.expert.dtype=fp8"], CODER, ValueError, r"^model_pair\.expert\.dtype: expected one of"),
    (["model_pair.amateur.device=gpu0"], CODER, ValueError, r"^model_pair\.amateur\.device: expected auto, cpu, cuda or cuda:N, got 'gpu0'$"),
    (["+model_pair.expert.bogus=1"], CODER, ValueError, r"^model_pair\.expert: unknown field\(s\) \['bogus'\]"),
    # demo (DemoConfig)
    (["demo.expert.lr=abc"], (), ValueError, r"^demo\.expert\.lr: expected a number, got 'abc'$"),
    (["demo.task.train_size=0"], (), ValueError, r"^demo\.task: train_size must be >= 1"),
    (["+demo.bogus=1"], (), ValueError, r"^demo: unknown field 'bogus'"),
    # what is named is what runs (issue 29): a real pair or dataset under the default demo experiment,
    # the demo's pair or task under another, a demo checkpoint amateur that the build does not keep
    ([], ("model_pair=qwen25_math_1.5b", "trainer=gpu"), ValueError,
     r"^model_pair: 'qwen2\.5-math-1\.5b_vs_qwen2\.5-0\.5b' is not the demo's pair, but experiment=demo \(the default\) runs the offline demo's task, benchmarks and settings; add experiment=none"),
    ([], ("model_pair=coder_cpu",), ValueError, r"^model_pair: 'coder-1\.5b_vs_0\.5b' is not the demo's pair"),
    ([], ("dataset=gsm8k",), ValueError, r"^dataset: 'gsm8k' under experiment=demo \(the default\) would be read by the demo's tiny pair; add experiment=none"),
    ([], ("experiment=coder_cpu", "model_pair=demo"), ValueError, r"^model_pair: 'demo-tiny' is the demo's pair, built by experiment=demo"),
    ([], ("experiment=coder_cpu", "dataset=demo"), ValueError, r"^dataset: 'demo' is the demo's generated task"),
    (["eval.benchmarks=[gsm8k,demo]"], CODER, ValueError, r"^eval\.benchmarks: 'demo' is the demo's generated task"),
    ([], ("model_pair=demo_checkpoint",), ValueError,
     r"^model_pair\.amateur\.name_or_path: expert_step150 is the demo expert after 150 steps, kept only when demo\.expert_checkpoints holds 150 \(got \[\]\); add demo\.expert_checkpoints=\[150\]$"),
    (["eval.models=[base,tunned]"], (), ValueError, r"^eval\.models: 'tunned' is not a model: did you mean tuned\? expected base\|tuned\|amateur\|contrastive_decoding"),
    (["dataset.max_problems=-5"], (), ValueError, r"^dataset\.max_problems: expected an integer >= 1 or null \(all\), got -5$"),
    (["run_name=a/../../b"], (), ValueError, r"^run_name: expected letters, digits.*no '\.\.'\), got 'a/\.\./\.\./b'$"),
    (["paths.cache_dir=/etc/hostname/x"], (), NotADirectoryError, r"^paths\.cache_dir: expected a directory, but '/etc/hostname' is a file$"),
    # evaluation of a tuned model
    (["stage=evaluate", "tuned=/nonexistent"], (), FileNotFoundError, r"^tuned: no such directory '/nonexistent' \(expected the adapter or merged directory"),
    (["stage=evaluate", "tuned=outputs/no_run/merged"], (), FileNotFoundError, r"^tuned: no such directory 'outputs/no_run/merged' \(expected the adapter"),
    (["stage=evaluate"], (), ValueError, r"^eval\.models: 'tuned' needs tuned=<adapter or merged dir> with stage=evaluate$"),
]


@pytest.mark.parametrize("overrides, base, exc, message", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_config_key_is_one_clear_error(overrides, base, exc, message):
    cfg = configured(overrides, base)
    with pytest.raises(exc, match=message) as err:
        validate(cfg)
    assert type(err.value) is exc and "\n" not in str(err.value)


def test_the_table_covers_every_config_group():
    groups = {p.name for p in CONF.iterdir() if p.is_dir()} - {"experiment", "sweep", "hydra", "paths", "quirks", "logger"}
    touched = {o.lstrip("+").split(".")[0].split("=")[0] for c in CONFIG_CASES for o in c[0]}
    assert groups - touched <= {"drift", "selection"}, groups - touched  # issue 19's groups: tests/test_selectors.py


def test_tuned_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^tuned\.name_or_path: '{tmp_path}' is not a model directory \(no config\.json\)$"):
        validate(configured(["stage=evaluate", f"tuned={tmp_path}"]))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["model_pair=nope"], r"^model_pair=nope: no such option \(conf/model_pair/nope\.yaml\); expected one of \['coder_cpu', "),
        (["-m", "dataset=gsm8k,gsm9k"], r"^dataset=gsm9k: no such option"),
        (["+sweep=grid"], r"^sweep=grid: no such option"),
        (["experiment=coder_cpu", "selection.beta=0.2"], None),
        (["hydra/launcher=basic", "model_pair=demo"], None),
    ],
)
def test_unknown_group_option_is_one_line(argv, message):
    bad = unknown_group_option(argv)
    if message is None:
        assert bad is None
    else:
        assert bad is not None and "\n" not in bad
        assert __import__("re").search(message, bad), bad


# --------------------------------------------------------------------------- data files


def _dataset(tmp_path, fmt="gsm8k", hub=None, **extra):
    return {"name": "t", "format": fmt, "answer_type": "numeric", "files": {"train": str(tmp_path / "t.jsonl")}, "hub": hub,
            "split": "train", "max_problems": None, "shuffle": False, **extra}


DATA_CASES = [
    # (file content (None: no file), format, exception, message fragment)
    (None, "gsm8k", FileNotFoundError, r"t\.jsonl.*no hub name configured"),
    ("", "gsm8k", ValueError, r"t\.jsonl: no problems \(the file has no rows\)$"),
    ("\n  \n\n", "gsm8k", ValueError, r"t\.jsonl: no problems"),
    ('{"question": "q", "answer": "#### 1"}\n{"question": "q", "answer": ', "gsm8k", ValueError, r"t\.jsonl:2: malformed JSON"),
    ('[1, 2]', "gsm8k", ValueError, r"t\.jsonl:1: expected a JSON object, got list"),
    ('{"question": "q"}', "gsm8k", ValueError, r"t\.jsonl:1: missing field 'answer'$"),
    ('{"question": "q", "answer": null}', "gsm8k", ValueError, r"t\.jsonl:1: missing field 'answer'$"),
    ('{"question": ["q"], "answer": "#### 1"}', "gsm8k", ValueError, r"t\.jsonl:1: field 'question': expected str, got list$"),
    ('{"question": "q", "answer": "no marker"}', "gsm8k", ValueError, r"t\.jsonl:1: field 'answer': no '####'"),
    ('{"Body": "b", "Question": "q", "Answer": {"x": 1}}', "svamp", ValueError, r"t\.jsonl:1: field 'Answer': expected int/float/str, got dict$"),
    ('{"question": "q", "choices": ["a"], "answer": 0}', "mmlu_stem", ValueError, r"t\.jsonl:1: field 'choices': expected 4 options, got 1$"),
    ('{"problem": "p", "solution": "no box"}', "minerva_math", ValueError, r"t\.jsonl:1: field 'solution': no \\boxed\{\} answer$"),
    (b'{"question": "q\xff", "answer": "#### 1"}', "gsm8k", ValueError, r"t\.jsonl:1: not UTF-8 text"),
]


@pytest.mark.parametrize("content, fmt, exc, message", DATA_CASES, ids=[f"{c[1]}:{str(c[0])[:24]!r}" for c in DATA_CASES])
def test_data_file_is_one_clear_error(tmp_path, content, fmt, exc, message):
    if content is not None:
        (tmp_path / "t.jsonl").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(exc, match=message) as err:
        load_problems(_dataset(tmp_path, fmt))
    assert "\n" not in str(err.value)


def test_missing_file_with_an_unreachable_hub_copy_is_one_line(tmp_path, monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)\nmore lines")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match=r"^dataset 't': no local file .*t\.jsonl for split 'train', and the hub copy openai/gsm8k\[train\] cannot be loaded \(Couldn't reach") as err:
        load_problems(_dataset(tmp_path, hub={"name": "openai/gsm8k", "config": "main"}))
    assert "\n" not in str(err.value)


def test_data_file_that_is_a_directory(tmp_path):
    (tmp_path / "t.jsonl").mkdir()
    with pytest.raises(FileNotFoundError, match=r"t\.jsonl: cannot read the file"):
        load_problems(_dataset(tmp_path))


# --------------------------------------------------------------------------- models


def test_model_paths(tmp_path, tiny_pair_dirs):
    with pytest.raises(FileNotFoundError, match=r"^model_pair\.expert\.name_or_path: no such directory '/nonexistent/expert'$"):
        load_tokenizer(ModelSpec("/nonexistent/expert"), "model_pair.expert")
    with pytest.raises(FileNotFoundError, match=r"^model_pair\.amateur\.name_or_path: .* is not a model directory \(no config\.json\)$"):
        load_model(ModelSpec(str(tmp_path)), "model_pair.amateur")
    with pytest.raises(FileNotFoundError, match=r"^model_pair\.expert\.gguf_file: 'x\.gguf' not found in"):
        load_tokenizer(ModelSpec(tiny_pair_dirs["expert"], gguf_file="x.gguf"), "model_pair.expert")
    with pytest.raises(FileNotFoundError, match=r"^model_pair\.expert: cannot load the tokenizer of 'nobody/no-such-model' \(") as err:
        load_tokenizer(ModelSpec("nobody/no-such-model"), "model_pair.expert")  # HF_HUB_OFFLINE=1 (conftest)
    assert "\n" not in str(err.value)


def test_tokenizer_mismatched_pair(tiny_pair_dirs):
    from lightreasoner.models import tiny

    tok = load_tokenizer(ModelSpec(tiny_pair_dirs["expert"]))
    other = tiny.build_char_tokenizer()
    vocab = other.get_vocab()
    a, b = sorted(t for t in vocab if len(t) == 1 and t.isalpha())[:2]
    other = _swap(other, a, b)  # the same tokens under other ids
    with pytest.raises(ValueError, match=r"^model_pair: tokenizers of expert 'E' and amateur 'A' disagree on the regular vocabulary \(2 tokens with different ids") as err:
        check_pair_tokenizers(tok, other, "E", "A")
    assert "\n" not in str(err.value)


def _swap(tokenizer, a: str, b: str):
    """A copy of a tokenizer whose ids of ``a`` and ``b`` are exchanged."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        path = Path(d) / "tokenizer.json"
        data = json.loads(path.read_text())
        vocab = data["model"]["vocab"]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        path.write_text(json.dumps(data))
        return AutoTokenizer.from_pretrained(d)


# --------------------------------------------------------------------------- disk: read-only cache, full disk


def tiny_run_cfg(tmp_path, tiny_pair_dirs, *extra):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(4)))
    cfg = configured([
        f"model_pair.expert.name_or_path={tiny_pair_dirs['expert']}", "model_pair.expert.gguf_file=null", "model_pair.expert.device=cpu",
        f"model_pair.amateur.name_or_path={tiny_pair_dirs['amateur']}", "model_pair.amateur.gguf_file=null", "model_pair.amateur.device=cpu",
        f"dataset.files.train={tmp_path / 'train.jsonl'}", "dataset.hub=null", "dataset.max_problems=4",
        "sampling.max_new_tokens=4", "sampling.batch_size=2", "trainer.max_steps=1", "stage=sample",
        f"paths.cache_dir={tmp_path / 'cache'}", *extra,
    ], CODER + ("logger=none", "trainer=cpu"))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


@pytest.fixture
def read_only(monkeypatch):
    """Make a directory read-only. As root (the CI and this machine) the kernel ignores the mode,
    so directory creation and writes below it are refused here the way the kernel would."""

    def make(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o555)
        if os.geteuid() == 0:
            root = str(path)
            under = lambda p: str(os.path.abspath(os.fspath(p))).startswith(root + os.sep)  # noqa: E731
            real_mkdir, real_open = pathlib.Path.mkdir, builtins.open

            def mkdir(self, *a, **k):
                if under(self) and not self.exists():
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
                return real_mkdir(self, *a, **k)

            def open_(file, mode="r", *a, **k):
                if isinstance(file, (str, os.PathLike)) and under(file) and any(c in mode for c in "wax+"):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
                return real_open(file, mode, *a, **k)

            monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
            monkeypatch.setattr(builtins, "open", open_)
        return path

    yield make


def test_read_only_cache_directory_is_one_error_and_writes_nothing(tmp_path, tiny_pair_dirs, read_only):
    read_only(tmp_path / "cache")
    cfg = tiny_run_cfg(tmp_path, tiny_pair_dirs)
    with pytest.raises(PermissionError, match=rf"Permission denied: '{tmp_path / 'cache' / 'traces'}") as err:
        run(cfg)
    assert "\n" not in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # complete, and says what happened
    assert summary["status"] == "failed" and "Permission denied" in summary["error"]


def test_full_disk_is_one_error_and_leaves_nothing_that_looks_complete(tmp_path, tiny_pair_dirs, monkeypatch):
    cfg = tiny_run_cfg(tmp_path, tiny_pair_dirs)

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(OSError, match=r"^\[Errno 28\] cannot write .*: No space left on device$") as err:
        run(cfg)
    assert err.value.errno == errno.ENOSPC
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "train.jsonl" and p.suffix not in (".lock", ".log")]
    assert [p for p in written if p.suffix in (".pt", ".tmp") or p.name in ("manifest.json", "key.json", "summary.json")] == []


# --------------------------------------------------------------------------- the command line


def _cli(tmp_path, *overrides):
    cache = [] if any(o.startswith("paths.cache_dir=") for o in overrides) else [f"paths.cache_dir={tmp_path / 'cache'}"]
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={tmp_path / 'run'}", *cache],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )


def test_command_line_prints_one_error_line_exits_2_and_writes_nothing_half_done(tmp_path):
    """Bad inputs through ``python train.py`` at once: an unknown option, a mistyped key, a real
    pair under the default demo experiment and an unusable cache directory. Each is checked before
    Hydra starts the job (lightreasoner.run.cli): one line, exit 2, and no run directory at all."""
    (tmp_path / "not-a-dir").write_text("a file where the cache directory should be")
    cases = {
        "group": (["model_pair=nope"], r"^error: model_pair=nope: no such option \(conf/model_pair/nope\.yaml\); expected one of \["),
        "cache": ([f"paths.cache_dir={tmp_path / 'not-a-dir' / 'cache'}"],
                  r"^error: paths\.cache_dir: expected a directory, but '.*not-a-dir' is a file$"),
        "typo": (["selection.betta=0.3"], r"^error: selection\.betta: no such key \(did you mean selection\.beta\?\); to add a new key on purpose write \+selection\.betta=0\.3$"),
        "demo": (["model_pair=qwen25_math_1.5b", "trainer=gpu"], r"^error: model_pair: 'qwen2\.5-math-1\.5b_vs_qwen2\.5-0\.5b' is not the demo's pair, but experiment=demo \(the default\)"),
    }
    procs = {}
    for name, (argv, _) in cases.items():
        (tmp_path / name).mkdir()
        procs[name] = _cli(tmp_path / name, *argv)
    for name, (argv, message) in cases.items():
        out, err = procs[name].communicate(timeout=300)
        assert procs[name].returncode == 2, (name, err[-2000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and __import__("re").match(message, lines[0]), (name, err[-2000:])
        assert "Traceback" not in out + err
        assert not (tmp_path / name / "run").exists()  # checked before Hydra makes the run directory
        assert not (tmp_path / name / "cache").exists() or not any((tmp_path / name / "cache").rglob("*.pt"))


# --------------------------------------------------------------------------- every key, a wrong kind


def _leaves(node, prefix=""):
    from omegaconf import DictConfig

    for k in node.keys():
        child = node._get_node(k)
        full = f"{prefix}{k}"
        if isinstance(child, DictConfig):
            yield from _leaves(child, full + ".")
        else:
            yield full


def _wrong_kind(value):
    if isinstance(value, bool):
        return "maybe"
    if isinstance(value, (int, float)):
        return "abc"
    if isinstance(value, str):
        return 12345
    if value is None:
        return ["x"]
    return 7  # a list


KINDS_ACCEPTED = {"threads"}  # threads=12345: a valid thread count


def test_every_key_of_every_group_rejects_a_wrong_kind(monkeypatch, tmp_path):
    """The bad-input table, extended by a sweep (issue 29): every key of every group of the composed
    demo config (and the real pair's ``model_pair``), set to a value of the wrong kind, is one
    ``ValueError``/``OSError`` naming the key before any work — never accepted, never a
    ``TypeError`` from deep inside."""
    monkeypatch.setenv("LIGHTREASONER_CACHE", str(tmp_path / "cache"))
    problems = []
    for base, only in (((), None), (CODER, "model_pair")):
        cfg0 = _composed(base)
        for key in _leaves(cfg0):
            top = key.split(".")[0]
            if top in ("paths", "hydra") or (only and top != only) or (not only and top == "model_pair") or key in KINDS_ACCEPTED:
                continue
            value = OmegaConf.select(cfg0, key, throw_on_missing=False)
            if OmegaConf.is_missing(cfg0, key) if "." not in key else False:
                continue
            cfg = copy.deepcopy(cfg0)
            with open_dict(cfg):
                OmegaConf.update(cfg, key, _wrong_kind(OmegaConf.to_container(cfg0, resolve=True) and value), merge=False)
            try:
                validate(cfg)
                problems.append(f"{key}: accepted {_wrong_kind(value)!r}")
            except (ValueError, OSError, ImportError) as err:
                first = str(err).splitlines()[0]
                named = key.split(".")[-1] in first or first.startswith(top)
                if not named or len(str(err).splitlines()) != 1:
                    problems.append(f"{key}: {first[:150]}")
            except Exception as err:  # noqa: BLE001 - the point: nothing else escapes
                problems.append(f"{key}: {type(err).__name__}: {str(err)[:150]}")
    assert not problems, "\n".join(problems)
