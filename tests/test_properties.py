"""Property-based tests (hypothesis) of the benchmark loaders and the answer parser.

Loaders: any local JSONL row, with random, missing or odd fields, gives a ``Problem`` with a
non-empty question and gold answer, or one ``ValueError`` naming the file, the line and what is
wrong; never another exception. Answers: ``extract_answer`` never raises; numbers survive
extraction and compare equal to themselves and their formatted forms; ``\\boxed{}`` nesting
and unclosed boxes; the choice comparison. Each bug these found has its regression test below.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightreasoner.data import answers as A
from lightreasoner.data.benchmarks import PARSERS, load_problems

# deterministic in CI (the same examples every run); function-scoped tmp_path is reused on purpose
PROPERTY = settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


# --------------------------------------------------------------------------- benchmark loaders

FIELDS = {
    "gsm8k": ["question", "answer"],
    "math500": ["problem", "answer", "subject", "level"],
    "svamp": ["Body", "Question", "Answer", "ID"],
    "asdiv": ["body", "question", "answer"],
    "minerva_math": ["problem", "solution", "type"],
    "olympiadbench": ["question", "final_answer", "context"],
    "mmlu_stem": ["question", "choices", "answer"],
    "generic": ["question", "answer"],
}
LEAF = (
    st.none() | st.booleans() | st.integers(-5, 9) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)
    | st.sampled_from(["#### 3", "#### ", "so \\boxed{2}", "\\boxed{}", "A", "b", "AB", "", " ", "3", "٣", "x"])
)
VALUE = st.recursive(LEAF, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=8)
ROW_ERROR = re.compile(
    r":(\d+): (missing field '\w+'|field '\w+': .+|expected a JSON object, got \w+|malformed JSON .+|not UTF-8 text .+|empty gold answer)$"
)


def rows_for(fmt: str):
    return st.lists(st.dictionaries(st.sampled_from(FIELDS[fmt] + ["other"]), VALUE, max_size=5) | VALUE, max_size=4)


def _load(path: Path, fmt: str):
    return load_problems({"name": "t", "format": fmt, "answer_type": "numeric", "files": {"test": str(path)}, "hub": None, "split": "test"})


def assert_problems_or_one_clear_error(path: Path, fmt: str, n_lines: int) -> None:
    try:
        problems = _load(path, fmt)
    except ValueError as e:  # anything else (KeyError, IndexError, TypeError, ...) fails the test
        msg = str(e)
        assert "\n" not in msg and msg.startswith(str(path)), msg
        rest = msg[len(str(path)):]
        m = ROW_ERROR.match(rest)
        assert m or rest == ": no problems (the file has no rows)", msg
        assert m is None or 1 <= int(m.group(1)) <= max(n_lines, 1), msg
        return
    assert problems
    for p in problems:
        assert isinstance(p.question, str) and p.question.strip()
        assert isinstance(p.answer, str) and p.answer.strip()
        if fmt == "mmlu_stem":
            assert p.answer in "ABCD" and len(p.answer) == 1


@settings(PROPERTY, max_examples=150)
@given(st.sampled_from(sorted(PARSERS)).flatmap(lambda f: st.tuples(st.just(f), rows_for(f))))
def test_any_row_is_a_problem_or_one_error_naming_file_line_and_field(tmp_path, case):
    fmt, rows = case
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert_problems_or_one_clear_error(path, fmt, len(rows))


@PROPERTY
@given(st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
def test_any_bytes_are_problems_or_one_clear_error(tmp_path, data):
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    assert_problems_or_one_clear_error(path, "generic", data.count(b"\n") + 1)


@pytest.mark.parametrize(
    "fmt, row, message",
    [  # each row was accepted before, as a wrong gold answer or a crash without file and line
        ("mmlu_stem", {"question": "q", "choices": list("abcd"), "answer": "AB"}, r"field 'answer': expected a letter A-D or an index 0-3, got 'AB'"),
        ("mmlu_stem", {"question": "q", "choices": list("abcd"), "answer": ""}, r"field 'answer': empty"),
        ("mmlu_stem", {"question": "q", "choices": list("abcd"), "answer": "x"}, r"field 'answer': expected a letter A-D or an index 0-3, got 'x'"),
        ("mmlu_stem", {"question": "q", "choices": list("abcd"), "answer": True}, r"field 'answer': expected int/str, got bool"),
        ("mmlu_stem", {"question": "q", "choices": [{"a": 1}, "b", "c", "d"], "answer": 0}, r"field 'choices': expected the options as text"),
        ("svamp", {"Body": "b", "Question": "q", "Answer": True}, r"field 'Answer': expected int/float/str, got bool"),
        ("gsm8k", {"question": "q", "answer": "steps ####"}, r"empty gold answer"),
        ("gsm8k", {"question": " ", "answer": "#### 3"}, r"field 'question': empty"),
        ("math500", {"problem": "p", "answer": "  "}, r"field 'answer': empty"),
        ("minerva_math", {"problem": "p", "solution": "so \\boxed{}"}, r"empty gold answer"),
        ("olympiadbench", {"question": "q", "final_answer": [{"a": 1}]}, r"field 'final_answer': expected answers as text or numbers"),
    ],
)
def test_rows_that_were_silently_wrong(tmp_path, fmt, row, message):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: ") + message):
        _load(path, fmt)


def test_mmlu_answer_forms_still_accepted(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"question": "q", "choices": list("abcd"), "answer": a} for a in (2, "2", "c", " C ")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.answer for p in _load(path, "mmlu_stem")] == ["C"] * 4


# --------------------------------------------------------------------------- answers

PIECES = st.sampled_from(
    list("0123456789{}\\$.,-+/%:() abxABCD\n") + ["\\boxed", "\\boxed{", "\\fbox", "\\frac", "The answer is", "\\text{", "^", "####", "answer:"]
)
TEXT = st.lists(PIECES, max_size=40).map("".join) | st.text(max_size=60)


@PROPERTY
@given(TEXT, st.sampled_from(A.ANSWER_TYPES))
def test_extract_answer_never_raises(text, answer_type):
    got = A.extract_answer(text, answer_type)
    assert got is None or isinstance(got, str)
    if answer_type == "choice":
        assert got is None or got in ("A", "B", "C", "D")


@PROPERTY
@given(TEXT, TEXT)
def test_comparisons_without_math_verify_never_raise(pred, gold):
    A.to_number(pred)
    A.to_number(pred, units=False)
    for answer_type in ("choice", "asdiv"):
        assert isinstance(A.is_equivalent(pred, gold, answer_type), bool)
    assert A.numbers_equal(pred, gold) == A.numbers_equal(gold, pred)  # symmetric, percent included


@PROPERTY
@given(TEXT)
def test_extracted_numbers_are_equivalent_to_themselves(text):
    got = A.extract_answer(text, "numeric")
    if got is not None and A.to_number(got) is not None:  # plain numbers (others go to math-verify)
        assert A.is_equivalent(got, got, "numeric")
    for answer_type in ("latex", "asdiv"):  # neither needs math-verify for equal strings
        got = A.extract_answer(text, answer_type)
        if got is not None and got.strip():
            assert A.is_equivalent(got, got, answer_type), (answer_type, got)


@PROPERTY
@given(st.integers(-10**9, 10**9))
def test_integers_survive_every_way_of_writing_them(n):
    for text in (f"so \\boxed{{{n}}}", f"\\boxed{{{n:,}}}", f"The answer is {n}.", f"Final answer: ${n}", f"it is {n}"):
        got = A.extract_answer(text, "numeric")
        assert A.is_equivalent(got, str(n), "numeric"), (text, got)
        assert A.is_equivalent(got, f"{n:,}", "numeric"), (text, got)
    assert not A.is_equivalent(str(n), str(n + 1 + abs(n)), "numeric")


@PROPERTY
@given(st.decimals(min_value=-10**6, max_value=10**6, places=3, allow_nan=False, allow_infinity=False))
def test_decimals_survive_extraction(d):
    s = str(d)
    for text in (f"\\boxed{{{s}}}", f"The answer is {s}", f"x = {s}"):
        assert A.is_equivalent(A.extract_answer(text, "numeric"), s, "numeric"), (text, s)


BRACE_FREE = st.text(alphabet=st.characters(blacklist_characters="{}\\", blacklist_categories=("Cs",)), max_size=5)
BALANCED = st.recursive(BRACE_FREE, lambda inner: st.lists(inner, min_size=1, max_size=3).map(lambda xs: "{" + "".join(xs) + "}")
                        | st.tuples(inner, inner).map("".join), max_leaves=10)


@PROPERTY
@given(BALANCED, BRACE_FREE, BRACE_FREE)
def test_boxed_nesting(content, before, after):
    assert A.last_boxed(f"{before}\\boxed{{{content}}}{after}") == content.strip()
    assert A.last_boxed(f"\\boxed{{1}} {before}\\fbox{{{content}}}") == content.strip()  # the last box wins
    assert A.last_boxed(f"{before}\\boxed{{{content}") is None  # unclosed (cut off): no box
    assert A.last_boxed(f"\\boxed{{7}}{before}\\boxed{{{content}") == "7"  # an unclosed last box does not hide the one before


def _boxed_contents_quadratic(text: str) -> list[str]:
    """The former implementation (each box scans to its closing brace): the reference."""
    out = []
    for m in A._BOX_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            if depth == 0 and j < len(text):
                out.append(text[i + 1 : j].strip())
        elif i > m.end():
            tail = re.match(r"[^\s$]+", text[i:])
            if tail:
                out.append(tail.group(0).rstrip(".,;"))
    return out


@PROPERTY
@given(st.lists(st.sampled_from(list("{}{} ax1$.\n") + ["\\boxed", "\\fbox", "\\boxed ", "\\boxed{", "box"]), max_size=30).map("".join))
def test_boxed_contents_equals_the_former_implementation(text):
    assert A.boxed_contents(text) == _boxed_contents_quadratic(text)


def test_thousands_of_unclosed_boxes_take_milliseconds_not_seconds():
    """Regression: a repetition loop of "\\boxed{" made extraction quadratic (10 s for this one)."""
    text = "\\boxed{" * 3000 + "x" * 1000
    start = time.perf_counter()
    for answer_type in ("numeric", "latex", "choice"):
        A.extract_answer(text, answer_type)
    assert time.perf_counter() - start < 1.0


@PROPERTY
@given(st.sampled_from("ABCDabcd"), TEXT)
def test_choice_letters(letter, other):
    assert A.is_equivalent(letter, letter.upper(), "choice")
    assert A.is_equivalent(f"({letter.upper()})", str("ABCD".index(letter.upper())), "choice")  # gold as an index
    if len(other.strip()) > 1 and other.strip().upper() in "ABCD":  # "AB", "BCD": a substring of ABCD, not a letter
        assert not A.is_equivalent(other, other, "choice")


@pytest.mark.parametrize("pred, gold", [("0", "4"), ("A", "9"), ("D", "²"), ("AB", "AB"), ("BCD", "B"), ("A", "")])
def test_choice_comparison_regressions(pred, gold):
    """Regression: gold "4" raised IndexError, "²" a ValueError; "AB" matched itself (a substring of "ABCD")."""
    assert A.is_equivalent(pred, gold, "choice") is False
