"""Loaders on the real shared files (counts from ../shared/data/README.md) and bad-input errors."""

from __future__ import annotations

import json

import pytest

from lightreasoner.data.answers import is_equivalent
from lightreasoner.data.benchmarks import dataset_config, dataset_identity, load_problems

COUNTS = [
    ("gsm8k", "train", 7473),
    ("gsm8k", "test", 1319),
    ("math500", "test", 500),
    ("svamp", "test", 1000),
    ("asdiv", "test", 2215),
    ("minerva_math", "test", 272),
    ("olympiadbench", "test", 675),
    ("mmlu_stem", "test", 3018),
]


@pytest.mark.parametrize("name,split,count", COUNTS)
def test_loader_counts_on_real_files(data_dir, name, split, count):
    cfg = dataset_config(name, data_dir)
    problems = load_problems(cfg, split=split, max_problems=0, shuffle=False)
    assert len(problems) == count
    assert problems[0].id == f"{name}/{split}/0" and problems[-1].id == f"{name}/{split}/{count - 1}"
    assert all(p.question.strip() and p.answer.strip() for p in problems)
    assert {p.answer_type for p in problems} == {cfg["answer_type"]}


def test_row_parsers_on_real_rows(data_dir):
    gsm = load_problems(dataset_config("gsm8k", data_dir), split="test", max_problems=0)
    assert gsm[0].answer == "18"
    assert all("," not in p.answer and "####" not in p.answer for p in gsm)
    assert any(p.id == "gsm8k/test/" + str(i) and p.answer == "2125" for i, p in enumerate(gsm))  # was "2,125"

    svamp = load_problems(dataset_config("svamp", data_dir), max_problems=1)[0]
    assert svamp.answer == "145"
    assert svamp.question.startswith("There are 87 oranges") and svamp.question.endswith("How big is each group of bananas?")
    assert " groups. How big" in svamp.question  # Body (a period added, as the toolkit does) + " " + Question

    asdiv = load_problems(dataset_config("asdiv", data_dir), max_problems=1)[0]
    assert asdiv.question == "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
    assert asdiv.answer == "9 (apples)"

    minerva = load_problems(dataset_config("minerva_math", data_dir), max_problems=1)[0]
    assert minerva.answer == "1.6"

    math500 = load_problems(dataset_config("math500", data_dir), max_problems=1)[0]
    assert math500.answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and math500.meta["level"] == 2

    olympiad = load_problems(dataset_config("olympiadbench", data_dir), max_problems=0)
    assert all("$" not in p.answer for p in olympiad)
    assert "69,84" in {p.answer for p in olympiad}

    mmlu = load_problems(dataset_config("mmlu_stem", data_dir), max_problems=1)[0]
    assert mmlu.answer == "C" and mmlu.meta["answer_index"] == 2
    # the Qwen2.5-Math toolkit's format: "<question>\nAnswer Choices: (A) ... (B) ... (C) ... (D) ..."
    assert mmlu.question == (
        "Based on the characteristic population curves that result from plotting population growth of a species, "
        "the most effective means of controlling the mosquito population is to\nAnswer Choices: "
        "(A) maintain the population at a point corresponding to the midpoint of its logistic curve "
        "(B) opt for zero population control once the K value of the curve has been reached "
        "(C) reduce the carrying capacity cif the environment to lower the K value (D) increase the mortality rate"
    )


def test_gold_answers_match_themselves(data_dir):
    """Every loaded gold answer is equivalent to itself under its benchmark's comparison."""
    for name in ("gsm8k", "svamp", "asdiv", "mmlu_stem"):
        for p in load_problems(dataset_config(name, data_dir), split="test", max_problems=300):
            assert is_equivalent(p.answer, p.answer, p.answer_type), p


def test_max_problems_and_seeded_shuffle(data_dir):
    cfg = dataset_config("svamp", data_dir)
    first = load_problems(cfg, max_problems=5)
    assert [p.id for p in first] == [f"svamp/test/{i}" for i in range(5)]
    a = load_problems(cfg, max_problems=5, shuffle=True, seed=3)
    b = load_problems(cfg, max_problems=5, shuffle=True, seed=3)
    c = load_problems(cfg, max_problems=5, shuffle=True, seed=4)
    assert [p.id for p in a] == [p.id for p in b] != [p.id for p in first]
    assert [p.id for p in a] != [p.id for p in c]
    cfg["max_problems"] = 7  # the config's value is the default
    assert len(load_problems(cfg)) == 7


def _cfg(tmp_path, fmt="gsm8k", **extra):
    return {
        "name": "t",
        "format": fmt,
        "answer_type": "numeric",
        "files": {"test": str(tmp_path / "t.jsonl")},
        "hub": None,
        "split": "test",
        "max_problems": None,
        "shuffle": False,
        **extra,
    }


def _write(tmp_path, lines):
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_generic_format_and_blank_lines(tmp_path):
    _write(tmp_path, [json.dumps({"q": "1+1?", "a": 2}), "", json.dumps({"q": "2+2?", "a": "4"})])
    probs = load_problems(_cfg(tmp_path, "generic", fields={"question": "q", "answer": "a"}))
    assert [(p.id, p.question, p.answer) for p in probs] == [("t/test/0", "1+1?", "2"), ("t/test/1", "2+2?", "4")]


@pytest.mark.parametrize(
    "lines, fmt, message",
    [
        (['{"question": "q", "answer": "#### 1"}', '{"question": "q", "answer": '], "gsm8k", r"t\.jsonl:2: malformed JSON"),
        (['{"question": "q"}'], "gsm8k", r"t\.jsonl:1: missing field 'answer'"),
        (['{"question": "q", "answer": "no marker"}'], "gsm8k", r"t\.jsonl:1: field 'answer': no '####'"),
        (['[1, 2]'], "gsm8k", r"t\.jsonl:1: expected a JSON object"),
        (['{"Body": "b", "Question": "q"}'], "svamp", r"t\.jsonl:1: missing field 'Answer'"),
        (['{"question": "q", "choices": ["a", "b"], "answer": 1}'], "mmlu_stem", r"t\.jsonl:1: field 'choices'"),
        (['{"problem": "p", "solution": "no box"}'], "minerva_math", r"t\.jsonl:1: field 'solution'"),
        (['{"question": "q", "answer": 1.5}', '{"question": 3, "answer": "1"}'], "generic", r"t\.jsonl:2: field 'question': expected str"),
    ],
)
def test_malformed_rows_give_one_clear_error(tmp_path, lines, fmt, message):
    _write(tmp_path, lines)
    with pytest.raises(ValueError, match=message) as info:
        load_problems(_cfg(tmp_path, fmt))
    assert "\n" not in str(info.value)


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"t\.jsonl.*no hub name configured"):
        load_problems(_cfg(tmp_path))
    (tmp_path / "t.jsonl").mkdir()
    with pytest.raises(FileNotFoundError, match=r"t\.jsonl: cannot read the file"):
        load_problems(_cfg(tmp_path))


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="dataset.format"):
        load_problems(_cfg(tmp_path, "nope"))


def test_dataset_identity(tmp_path):
    _write(tmp_path, ['{"question": "q", "answer": "#### 1"}'])
    a = dataset_identity(_cfg(tmp_path), "test")
    assert a["sha256"] and a["path"].endswith("t.jsonl")
    _write(tmp_path, ['{"question": "q", "answer": "#### 2"}'])
    assert dataset_identity(_cfg(tmp_path), "test")["sha256"] != a["sha256"]
    hub = dataset_identity(_cfg(tmp_path, hub={"name": "openai/gsm8k", "config": "main", "revision": None}), "train")
    assert hub == {"name": "t", "format": "gsm8k", "split": "train", "hub": "openai/gsm8k", "config": "main", "revision": "main"}


def test_question_texts_are_the_toolkits(data_dir):
    """SVAMP: a period ends the body before the question (the toolkit adds one when missing);
    ASDiv: body and question joined by a space."""
    svamp = load_problems(dataset_config("svamp", data_dir), split="test", max_problems=1)[0]
    assert svamp.question == (
        "There are 87 oranges and 290 bananas in Philip's collection. If the bananas are organized into 2 groups "
        "and oranges are organized into 93 groups. How big is each group of bananas?"
    )
    asdiv = load_problems(dataset_config("asdiv", data_dir), split="test", max_problems=1)[0]
    assert asdiv.question == "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
