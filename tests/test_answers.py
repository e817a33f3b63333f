"""Answer extraction and equivalence on real-world answer strings (one table, expected verdicts)."""

from __future__ import annotations

import threading
import time

import pytest

from lightreasoner.data import answers
from lightreasoner.data.answers import boxed_contents, extract_answer, is_equivalent

# (model output, answer_type, gold, expected extracted answer, expected verdict)
CASES = [
    # --- GSM8K / SVAMP: numeric
    ("She makes 9 * 2 = $18 every day.\n\\boxed{18}", "numeric", "18", "18", True),
    ("So she earns \\boxed{\\$18}.", "numeric", "18", "\\$18", True),
    ("The total is \\boxed{1,000} dollars.", "numeric", "1000", "1,000", True),
    ("It costs $1,450,000 in total. The answer is 1,450,000.", "numeric", "1450000", "1,450,000", True),
    ("The answer is $18.00", "numeric", "18", "18.00", True),
    ("Therefore \\boxed{18 \\text{ dollars}}", "numeric", "18", "18 \\text{ dollars}", True),
    ("Each group has \\boxed{145} bananas.", "numeric", "145.0", "145", True),
    ("\\boxed{10\\%}", "numeric", "10", "10\\%", True),
    ("The discount is \\boxed{10\\%}", "numeric", "0.1", "10\\%", True),
    ("She needs \\boxed{\\frac{35}{2}} cups", "numeric", "17.5", "\\frac{35}{2}", True),
    ("The answer is 17 eggs.", "numeric", "18", "17 eggs", False),
    ("First 3 + 4 = 7, then 7 * 2 = 14", "numeric", "14", "14", True),  # no box, no phrase
    ("First \\boxed{7}, then corrected: \\boxed{14}", "numeric", "14", "14", True),  # two boxes: the last
    ("First \\boxed{14}, then corrected: \\boxed{7}", "numeric", "14", "7", False),
    ("I am not sure how to solve this.", "numeric", "3", None, False),
    ("So the answer is -3", "numeric", "-3", "-3", True),
    ("\\boxed{5 apples}", "numeric", "5", "5 apples", True),
    ("\\boxed{12 m^2}", "numeric", "12", "12 m^2", True),
    ("\\boxed{1,2}", "numeric", "12", "1,2", False),  # a list is not a thousands separator
    ("The final answer is $\\boxed{0.333}$", "numeric", "0.3333333", "0.333", False),
    # --- MATH500 / Minerva / OlympiadBench: LaTeX via math-verify
    ("Thus $x = \\boxed{\\frac{1}{2}}$.", "latex", "0.5", "\\frac{1}{2}", True),
    ("\\boxed{\\dfrac{1}{2}}", "latex", "\\frac12", "\\dfrac{1}{2}", True),
    ("\\boxed{\\sqrt{117}}", "latex", "3\\sqrt{13}", "\\sqrt{117}", True),
    ("\\boxed{\\sqrt{116}}", "latex", "3\\sqrt{13}", "\\sqrt{116}", False),
    ("\\boxed{(1, 2)}", "latex", "(1,2)", "(1, 2)", True),
    ("\\boxed{(2, 1)}", "latex", "(1,2)", "(2, 1)", False),
    ("\\boxed{[0, 1)}", "latex", "[0,1)", "[0, 1)", True),
    ("\\boxed{(0, 1)}", "latex", "[0,1)", "(0, 1)", False),
    ("The angle is \\boxed{90^\\circ}.", "latex", "90", "90^\\circ", True),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "latex", "\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{\\boxed{\\frac{3}{4}}}", "latex", "\\frac{3}{4}", "\\frac{3}{4}", True),  # nested boxes: the inner one
    ("So $\\boxed{x^{2}+\\frac{1}{2}}$", "latex", "\\frac12 + x^2", "x^{2}+\\frac{1}{2}", True),
    ("\\fbox{1.6} cm", "latex", "1.6", "1.6", True),
    ("hence \\boxed 5.", "latex", "5", "5", True),
    ("\\boxed{5x}", "latex", "5", "5x", False),
    ("\\boxed{84, 69}", "latex", "$69$,$84$", "84, 69", True),  # OlympiadBench multiple answers
    ("\\boxed{\\frac{41}{12}\\text{ km}}", "latex", "\\frac{41}{12}", "\\frac{41}{12}\\text{ km}", True),
    ("\\boxed{2\\pi}", "latex", "6.283185307", "2\\pi", True),
    ("\\boxed{\\frac{1}{3}", "latex", "\\frac13", "3", False),  # cut off inside the box -> last number
    ("The answer is $\\frac{1}{3}$.", "latex", "\\frac13", "\\frac{1}{3}", True),
    # --- ASDiv: units in parentheses, ratios, times, fractions, ordinals, words
    ("\\boxed{9}", "asdiv", "9 (apples)", "9", True),
    ("\\boxed{9 apples}", "asdiv", "9 (apples)", "9 apples", True),
    ("\\boxed{8}", "asdiv", "9 (apples)", "8", False),
    ("\\boxed{9 (apples)}", "asdiv", "9 (apples)", "9 (apples)", True),
    ("\\boxed{3:4}", "asdiv", "3:4", "3:4", True),
    ("\\boxed{6:8}", "asdiv", "3:4", "6:8", True),
    ("\\boxed{3}", "asdiv", "3:4", "3", False),  # the leading number of a ratio is not the answer
    ("\\boxed{\\text{3:30 p.m.}}", "asdiv", "3:30 p.m.", "\\text{3:30 p.m.}", True),
    ("\\boxed{2.5}", "asdiv", "5/2", "2.5", True),
    ("\\boxed{5}", "asdiv", "5/2", "5", False),
    ("\\boxed{-\\frac{1}{3}}", "asdiv", "-(1/3)", "-\\frac{1}{3}", True),
    ("\\boxed{6th}", "asdiv", "6th", "6th", True),
    ("\\boxed{6}", "asdiv", "6th", "6", True),
    ("\\boxed{\\text{John}}", "asdiv", "John", "\\text{John}", True),
    ("\\boxed{Yes}", "asdiv", "No", "Yes", False),
    ("The answer is: they are equal.", "asdiv", "They are equal", "they are equal", True),
    ("\\boxed{14}", "asdiv", "14  (seats)", "14", True),
    # --- MMLU-STEM: letters
    ("The correct option is \\boxed{C}", "choice", "C", "C", True),
    ("\\boxed{(B)}", "choice", "B", "B", True),
    ("\\boxed{\\text{D}}", "choice", "D", "D", True),
    ("\\boxed{B. 42 kg}", "choice", "B", "B", True),
    ("The answer is (A).", "choice", "A", "A", True),
    ("I think (B) is wrong, so (C).", "choice", "C", "C", True),
    ("\\boxed{A}", "choice", "C", "A", False),
    ("A plant cell has a wall.", "choice", "A", None, False),
]


@pytest.mark.parametrize("text,answer_type,gold,extracted,verdict", CASES)
def test_extract_and_equivalence(text, answer_type, gold, extracted, verdict):
    got = extract_answer(text, answer_type)
    assert got == extracted
    assert is_equivalent(got, gold, answer_type) is verdict


def test_table_is_big_enough():
    assert len(CASES) >= 40
    assert sum(not c[-1] for c in CASES) >= 10


def test_boxed_contents_nested_and_unclosed():
    assert boxed_contents("\\boxed{a{b}c} and \\boxed{\\frac{1}{2}}") == ["a{b}c", "\\frac{1}{2}"]
    assert boxed_contents("\\boxed{1} \\boxed{2") == ["1"]
    assert boxed_contents("no box") == []


def test_unknown_answer_type():
    with pytest.raises(ValueError, match="answer_type"):
        is_equivalent("1", "1", "maths")


def test_pathological_input_is_wrong_not_a_stall():
    t0 = time.monotonic()
    assert is_equivalent("2^{2^{2^{2^{9^{9^{9}}}}}}", "5", "latex", timeout_s=1.0) is False
    assert time.monotonic() - t0 < 10
    assert is_equivalent("\\frac{1}{2}", "0.5000", "latex") is True  # the worker still answers


def test_worker_killed_past_deadline_then_restarted():
    # A deadline far below what the comparison needs: the worker is killed, the verdict is False,
    # and the next comparison gets a fresh worker.
    assert answers._VERIFIER.verify("2^{2^{2^{2^{9^{9^{9}}}}}}", "5", deadline_s=0.05) is False
    assert answers._VERIFIER.proc is None  # killed
    assert answers.math_verify_equal("\\sqrt{117}", "3\\sqrt{13}") is True


def test_safe_from_a_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(is_equivalent("\\sqrt{117}", "3\\sqrt{13}", "latex")))
    t.start()
    t.join(60)
    assert out == [True]
