"""The format-only control (issue 32): the final-answer span on hand-built token sequences
(boxed, "The answer is", two cues -> the last, no cue -> none, multi-byte text), ``format_only``
keeping exactly the span's eligible steps with the method's labels, the ``kept_in_answer_span``
statistic by hand, and ``method=format_only`` in a shrunken demo multirun end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _demo_overrides import SHRUNKEN_DEMO
from test_selection import record

from lightreasoner.selection.select import (
    answer_span_char,
    answer_span_starts,
    answer_span_step,
    kept_step_profile,
    select,
)
from lightreasoner.models.tiny import build_char_tokenizer

REPO = Path(__file__).resolve().parents[1]


class WordTok:
    """Token id -> its text (id 0 a special token: skipped), the way a word-piece tokenizer with
    leading spaces (`` The``, Qwen-style) decodes."""

    def __init__(self, pieces):
        self.pieces = ["<|im_end|>", *pieces]

    def ids(self, pieces):
        return [self.pieces.index(p) for p in pieces]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids if not (skip_special_tokens and i == 0))


class ByteTok(WordTok):
    """Byte-level tokens (Qwen's BPE): a prefix that cuts a multi-byte character decodes to U+FFFD."""

    def decode(self, ids, skip_special_tokens=False):
        return b"".join(self.pieces[i] for i in ids if i != 0).decode("utf-8", errors="replace")


TRACE = ["1", "8", " + ", "3", " = ", "2", "1", ".", " The", " answer", " is", " \\boxed{", "2", "1", "}", ".", "<|im_end|>"]
WORDS = WordTok(sorted(set(TRACE) - {"<|im_end|>"} | {"Answer:", " the", " So", " 5", " 6", "\n"}))


@pytest.mark.parametrize(
    "pieces, first",
    [
        (TRACE, " The"),  # "The answer is \boxed{": one statement, the span starts at "The"
        (["1", " = ", "2", " \\boxed{", "2", "}", "<|im_end|>"], " \\boxed{"),  # a box alone
        (["2", "1", ".", " The", " answer", " is", " 5", "."], " The"),  # "The answer is" alone
        (["Answer:", " 5", ".", "\n", " So", " the", " answer", " is", " 6", "."], " the"),  # two cues: the last
        (["The", " answer", " is", " 5", ".", " \\boxed{", "6", "}"], " \\boxed{"),  # two statements: the box
        (["Answer:", " \\boxed{", "6", "}"], "Answer:"),  # "Answer: \boxed{": one statement
    ],
)
def test_the_span_starts_at_the_last_answer_cue(pieces, first):
    tok = WordTok(sorted(set(pieces) - {"<|im_end|>"}))
    step = answer_span_step(tok.ids(pieces), tok)
    assert pieces[step] == first and first not in pieces[step + 1 :]


def test_no_cue_no_span_and_the_character_offsets():
    tok = WordTok(["1", " = ", "2", "."])
    assert answer_span_step(tok.ids(["1", " = ", "2", ".", "<|im_end|>"]), tok) is None
    assert answer_span_char("x = 3. The answer is 3.") == 7
    assert answer_span_char("The answer is 4. Wait: the answer is \\boxed{5}") == 23
    assert answer_span_char("no cue here, the answer was 3") is None


def test_the_span_on_the_demo_style_tokenizer_and_on_byte_level_tokens():
    tok = build_char_tokenizer(words=[" The", " answer", " is", " \\boxed{"])  # the demo pair's kind
    text = "18 + 3 = 21. The answer is \\boxed{21}."
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    step = answer_span_step(ids, tok)
    assert tok.decode(ids[step:], skip_special_tokens=True) == " The answer is \\boxed{21}."
    # "€" is three bytes split over two tokens: prefixes that cut it decode to U+FFFD
    pieces = [b"x", b"\xe2\x82", b"\xac", b" 5", b".", b" The", b" answer", b" is", b" 5"]
    btok = ByteTok(pieces)
    assert answer_span_step(btok.ids(pieces), btok) == 5


def _records():
    """Two hand-built scored traces over WORDS: the first ``TRACE`` (span from step 8), the
    second without a cue. Every step has one candidate (its token); KL high at steps 2, 4, 9, 12."""
    def rec(pid, pieces, high):
        ids = WORDS.ids(pieces)
        kl = [0.9 if t in high else 0.1 for t in range(len(ids))]
        return record(pid, [100, 101], ids, kl, [([i], (0.9,), (0.5,)) for i in ids])

    no_cue = ["1", " + ", "2", " = ", "3", ".", "<|im_end|>"]
    return [rec("toy/train/0", TRACE, {2, 4, 9, 12}), rec("toy/train/1", no_cue, {1, 3})]


def test_format_only_keeps_every_span_step_and_no_other():
    recs = _records()
    spans = answer_span_starts(recs, WORDS)
    assert spans == {"toy/train/0": 8, "toy/train/1": None}
    got = select(recs, 0.5, 0.2, steps="answer_span", span_starts=spans)
    assert [s.problem_id for s in got] == ["toy/train/0"]  # no cue: nothing kept
    assert got[0].steps.tolist() == list(range(8, len(TRACE)))  # every step of the span, KL ignored
    lr = select(recs, 0.5, 0.2)
    assert {s.problem_id: s.steps.tolist() for s in lr} == {"toy/train/0": [2, 4, 9, 12], "toy/train/1": [1, 3]}
    for ids, w in zip(got[0].target_ids, got[0].target_w):  # the method's (contrastive) labels
        assert w.sum().item() == pytest.approx(1.0)
    assert select(recs, 0.5, 0.2, steps="answer_span", span_starts={"toy/train/0": 0}, first_step=1)[0].steps[0] == 1
    with pytest.raises(ValueError, match="answer_span"):
        select(recs, 0.5, 0.2, steps="answer_span")


def test_kept_in_answer_span_by_hand():
    recs = _records()
    lr = select(recs, 0.5, 0.2)  # kept: steps 2, 4, 9, 12 of trace 0 (span from 8), 1, 3 of trace 1
    prof = kept_step_profile(recs, lr, WORDS)
    assert prof["kept_in_answer_span"] == pytest.approx(2 / 6)
    assert prof["steps_in_answer_span"] == pytest.approx((len(TRACE) - 8) / (len(TRACE) + 7))
    assert prof["traces_with_answer_cue"] == 0.5
    only = select(recs, 0.5, 0.2, steps="answer_span", span_starts=answer_span_starts(recs, WORDS))
    assert kept_step_profile(recs, only, WORDS)["kept_in_answer_span"] == 1.0


def test_shrunken_demo_multirun_with_format_only(tmp_path):
    sweep = tmp_path / "multirun"
    args = [sys.executable, str(REPO / "train.py"), "-m", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}",
            "method=lightreasoner,format_only", *SHRUNKEN_DEMO, "selection.beta=0.0"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=900, env={**os.environ}, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summaries = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert set(summaries) == {"lightreasoner", "format_only"}
    lr, fo = summaries["lightreasoner"], summaries["format_only"]
    assert fo["status"] == "finished" and fo["efficiency"]["sampling"]["cached"] is True  # the same trace cache
    assert fo["efficiency"]["optimisation"]["updates"] == lr["efficiency"]["optimisation"]["updates"]  # the same update budget
    assert 0.0 <= lr["selection"]["kept_in_answer_span"] <= 1.0
    if fo["selection"]["kept_steps"]:
        assert fo["selection"]["kept_in_answer_span"] == 1.0
        assert fo["selection"]["kept_steps"] <= lr["selection"]["kept_steps"]  # beta=0 keeps every eligible step
