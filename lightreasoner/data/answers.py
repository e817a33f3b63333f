"""Final-answer extraction and equivalence with the gold answer.

``extract_answer`` takes the last ``\\boxed{…}`` (or ``\\fbox{…}``, nested braces handled, also
``\\boxed 5``), else the text after "The answer is", else the last number; for multiple choice
it returns a letter A-D.

``is_equivalent`` compares by ``answer_type`` (see ``records.Problem.answer_type``):

- ``numeric`` (GSM8K, SVAMP): numbers with thousands separators, ``$``/``\\$``, trailing units,
  ``%``, fractions. An integer gold answer is compared exactly (``1201587`` is not ``1201565``);
  a non-integer one with a relative tolerance of 1e-4 and an absolute one of 1e-8 near 0.
  ``published_tolerance=True`` (``eval.published_numeric_tolerance``, on under
  ``quirks=published``) restores the Qwen2.5-Math toolkit's relative tolerance 1e-4 for every
  value, integers included. Anything that is not a plain number goes to math-verify.
- ``latex`` (MATH500, Minerva, OlympiadBench): normalised string equality, then plain numbers,
  then math-verify (gold given to it as LaTeX, ``$…$``).
- ``asdiv``: the unit in parentheses is dropped (``"9 (apples)"`` → 9); ratios and times
  (``"3:4"``, ``"3:30 p.m."``) and fractions (``"5/2"``) are kept whole; ordinals (``"6th"``)
  compare as their number or their text; words compare as normalised text.
- ``choice`` (MMLU-STEM): by letter.

Strict and flexible (the lm-evaluation-harness "strict-match" / "flexible-extract" convention):
``extract_answer`` is the **strict** extractor (the evaluation's score). :func:`answer_format`
says where its answer came from (``boxed``, ``unboxed``: "The answer is", the last number or a
``(X)``; ``malformed``: a box whose content is not an answer of the benchmark's type; ``none``).
:func:`lenient_answer` is the **flexible** extractor, used when the strict answer is none or
malformed (for LaTeX benchmarks: anything but a complete box): the last number in the output
(numeric, ASDiv), the last standalone choice letter (multiple choice), the content of a box cut
off by the token budget, else the last ``$…$`` / ``\\(…\\)`` / ``\\[…\\]`` span (right of its last
``=``) for LaTeX answers. :func:`final_answers` lists the distinct final answers an output
states (every box, and every "The answer is" with a plain answer): more than one is hedging.

math-verify runs in a separate worker process with a deadline: a pathological input (or
one that hangs inside C code, where signals cannot interrupt it) counts as wrong and the
worker is restarted, so it can never stall an evaluation. It also makes the check safe to
call from any thread (math-verify's own timeouts use ``signal.alarm``, main thread only).
"""

from __future__ import annotations

import logging
import math
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

log = logging.getLogger(__name__)

ANSWER_TYPES = ("numeric", "latex", "asdiv", "choice")
REL_TOL = 1e-4
"""Relative tolerance of numeric comparisons: non-integer golds, or every value under the
published quirk (the Qwen2.5-Math toolkit's ``math_equal``)."""
ABS_TOL = 1e-8
"""Absolute tolerance for non-integer golds near 0 (where a relative tolerance vanishes)."""
FLOAT_SLACK = 1e-12
"""Relative slack of an exact (integer) comparison: floating-point rounding only (``0.29 * 100``)."""
CHOICES = "ABCD"

# --------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER_IS_RE = re.compile(
    r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*[:\s]*(.+)", re.IGNORECASE
)
_BOX_TAIL_RE = re.compile(r"[^\s$]+")
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def boxed_contents(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{…}`` / ``\\fbox{…}`` / ``\\boxed x`` in order.

    Braces are matched (``\\boxed{\\frac{1}{2}}`` → ``\\frac{1}{2}``); a box left unclosed
    (an output cut off at ``max_new_tokens``) is skipped. Linear in the text: the braces are
    matched once for all boxes (a degenerate output of thousands of unclosed boxes took
    seconds when each box scanned to the end).
    """
    if "box" not in text:
        return []
    close: dict[int, int] = {}  # position of a "{" -> position of its "}"
    opened: list[int] = []
    for j, ch in enumerate(text):
        if ch == "{":
            opened.append(j)
        elif ch == "}" and opened:
            close[opened.pop()] = j
    out = []
    for m in _BOX_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            if i in close:
                out.append(text[i + 1 : close[i]].strip())
        elif i > m.end():  # "\boxed 5": up to whitespace or the end of the math
            tail = _BOX_TAIL_RE.match(text, i)
            if tail:
                out.append(tail.group(0).rstrip(".,;"))
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last complete box in ``text``, or None."""
    boxes = boxed_contents(text)
    return boxes[-1] if boxes else None


def _answer_is(text: str) -> str | None:
    """Text after the last "The answer is" / "Answer:" up to the end of that line."""
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    ans = matches[-1].group(1).strip().split("\n")[0].strip()
    ans = re.sub(r"[.。]\s*$", "", ans).strip().strip("$").strip()
    return ans or None


def _last_number(text: str) -> str | None:
    nums = _NUMBER_RE.findall(text)
    return nums[-1] if nums else None


def _choice_letter(text: str) -> str | None:
    """The option letter in a short answer: ``B``, ``(B)``, ``\\text{B}``, ``B. 42 kg``, ``B)``."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}", r"\1", text).strip().strip("$").strip()
    m = re.match(r"^\(?([A-Da-d])\)?(?:$|[.):\s])", s)
    if m and (len(s) == 1 or not s[1:2].isalpha()):
        return m.group(1).upper()
    m = re.search(r"\(([A-D])\)", s)
    if m:
        return m.group(1)
    m = re.search(r"\b(?:option|choice)\s*\(?([A-D])\b", s, re.IGNORECASE)
    return m.group(1).upper() if m else None


def strict_answer(text: str, answer_type: str) -> tuple[str | None, str | None]:
    """``(answer, source)`` of the strict extractor: source ``box``, ``answer_is``,
    ``last_number``, ``paren`` (multiple choice: the last ``(X)``), or None with no answer."""
    if text is None:
        return None, None
    if answer_type == "choice":
        for cand, source in ((last_boxed(text), "box"), (_answer_is(text), "answer_is")):
            if cand:
                letter = _choice_letter(cand)
                if letter:
                    return letter, source
        paren = re.findall(r"\(([A-D])\)", text)
        return (paren[-1], "paren") if paren else (None, None)
    box = last_boxed(text)
    if box is not None:
        return box, "box"
    said = _answer_is(text)
    if said:
        return said, "answer_is"
    num = _last_number(text)
    return (num, "last_number") if num is not None else (None, None)


def extract_answer(text: str, answer_type: str) -> str | None:
    """The final answer in a model output, or None when there is none (the strict extractor).

    Last box, else "The answer is …", else the last number. For ``choice``: the letter from
    the box, else from "The answer is …", else the last ``(X)`` in the text.
    """
    return strict_answer(text, answer_type)[0]


# --------------------------------------------------------------------------- flexible extraction

_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|\$([^$]+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_CHOICE_LETTER_RE = re.compile(r"(?<![A-Za-z0-9_\\])([A-D])(?![A-Za-z0-9_])")


def well_formed(answer: str | None, source: str | None, answer_type: str) -> bool:
    """Whether a strict answer is in the expected form, so the flexible extractor keeps it:
    a plain number (units allowed) for numeric answers; a plain number, ratio, time or a
    digit-free word answer for ASDiv; a letter for multiple choice; a complete box's non-empty
    content for LaTeX answers."""
    if answer is None or not str(answer).strip():
        return False
    if answer_type == "choice":
        return True
    if answer_type == "latex":
        return source == "box"
    if answer_type == "asdiv":
        a = _drop_unit(answer)
        return (to_number(a) is not None or not re.search(r"\d", a)
                or re.match(r"^\s*\d+\s*:\s*\d+", _clean_latex(a)) is not None
                or re.fullmatch(r"\d+(?:st|nd|rd|th)", normalize_text(a)) is not None)
    return to_number(answer) is not None


def answer_format(answer: str | None, source: str | None, answer_type: str) -> str:
    """Where the strict answer stands: ``boxed`` (the expected format), ``malformed`` (a box
    whose content is not an answer of this type), ``unboxed`` (found outside a box: "The answer
    is", the last number, a ``(X)``), ``none`` (no answer)."""
    if answer is None:
        return "none"
    if source == "box":
        return "boxed" if well_formed(answer, source, answer_type) else "malformed"
    return "unboxed"


def _unclosed_box_tail(text: str) -> str | None:
    """The content of the output's last box when it was cut off before its closing brace."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    i = m.end()
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for ch in text[i:]:
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return None  # closed: a complete box
    tail = text[i + 1 :].strip().rstrip("$").strip()
    return tail or None


def _rhs(expr: str) -> str:
    """The part of ``expr`` right of its last top-level ``=`` (``x = \\frac12`` -> ``\\frac12``)."""
    depth, cut = 0, -1
    for j, ch in enumerate(expr):
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        elif ch == "=" and depth == 0:
            cut = j
    return expr[cut + 1 :].strip() if cut >= 0 else expr.strip()


def lenient_answer(text: str, answer_type: str) -> str | None:
    """The flexible extractor's answer: the last number (numeric, ASDiv), the last standalone
    choice letter (``A`` followed by a lower-case word is the article, skipped), for LaTeX the
    content of a box cut off by the token budget, else the last math span's right-hand side."""
    if not text:
        return None
    if answer_type == "choice":
        letters = [m.group(1) for m in _CHOICE_LETTER_RE.finditer(text)
                   if not (m.group(1) == "A" and re.match(r"\s+[a-z]", text[m.end():m.end() + 2]))]
        return letters[-1] if letters else None
    if answer_type == "latex":
        tail = _unclosed_box_tail(text)
        if tail:
            return tail
        spans = [next(g for g in m.groups() if g is not None) for m in _MATH_SPAN_RE.finditer(text)]
        spans = [_rhs(sp).rstrip(".,;").strip() for sp in spans]
        spans = [sp for sp in spans if sp]
        return spans[-1] if spans else None
    return _last_number(text)


def flexible_answer(text: str, answer_type: str) -> str | None:
    """The flexible score's answer: the strict one when it is well formed
    (:func:`well_formed`), else the lenient extractor's (:func:`lenient_answer`), else the
    strict one."""
    strict, source = strict_answer(text, answer_type)
    if well_formed(strict, source, answer_type):
        return strict
    return lenient_answer(text or "", answer_type) or strict


def _answer_key(answer: str, answer_type: str):
    """What two stated final answers are compared by for hedging (a number's value, a letter,
    else the whitespace-free LaTeX)."""
    inner = last_boxed(answer)
    answer = inner if inner is not None else answer
    if answer_type == "choice":
        return _choice_letter(answer) or _latex_key(answer)
    num = to_number(_drop_unit(answer) if answer_type == "asdiv" else answer, units=answer_type != "latex")
    if num is not None:
        value, pct = num
        return ("num", round(value, 9), pct)
    return _latex_key(answer)


def final_answers(text: str, answer_type: str) -> list:
    """The distinct final answers an output states, in order: every complete box (a box inside
    a box counts once) and every "The answer is …" whose content is a plain answer (a number,
    or a letter for multiple choice). More than one is hedging."""
    if not text:
        return []
    stated = [b for b in boxed_contents(text) if last_boxed(b) is None]
    if answer_type != "latex":
        for m in _ANSWER_IS_RE.finditer(text):
            said = m.group(1).strip().split("\n")[0].strip()
            said = re.sub(r"[.。]\s*$", "", said).strip().strip("$").strip()
            if not said:
                continue
            if answer_type == "choice":
                if _choice_letter(said):
                    stated.append(said)
            elif to_number(_drop_unit(said) if answer_type == "asdiv" else said) is not None:
                stated.append(said)
    keys = []
    for a in stated:
        k = _answer_key(a, answer_type)
        if k not in keys:
            keys.append(k)
    return keys


# --------------------------------------------------------------------------- numbers

_UNIT_TAIL = r"(?:\s*(?:\\text\{[^{}]*\}|\\mathrm\{[^{}]*\}|\\mbox\{[^{}]*\}|[A-Za-z][A-Za-z .'/]*)?\s*(?:\^\{?\d\}?)?)"

_TEXT_UNIT_TAIL = r"(?:\s*\\(?:text|mathrm|mbox)\{[^{}]*\}\s*(?:\^\{?\d\}?)?)"


def _clean_latex(s: str) -> str:
    s = s.strip()
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"(\d)\\,(\d{3})", r"\1,\2", s)  # 1\,000
    s = re.sub(r"\\(?:left|right|displaystyle|!)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[,;: ]", " ", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("{,}", ",").replace("\\%", "%").replace("−", "-")
    return re.sub(r"\s+", " ", s).strip()


def to_number(s: str, units: bool = True) -> tuple[float, bool] | None:
    """``(value, is_percent)`` when ``s`` is a plain number, else None.

    Accepts thousands separators (``1,000``), ``$``/``\\$``, a sign, decimals, ``a/b`` and
    ``\\frac{a}{b}`` (also ``\\dfrac``), a trailing ``%``/``\\%``/``percent``, and trailing
    units (``12 apples``, ``5\\text{ cm}``, ``4 m^2``). ``1,2`` (a list) is not a number.
    ``units=False`` (LaTeX answers, where ``5x`` is an expression) allows only units written
    as ``\\text{…}``/``\\mathrm{…}``.
    """
    if s is None:
        return None
    t = _clean_latex(s)
    t = re.sub(r"^\\text\{([^{}]*)\}$", r"\1", t).strip()
    sign = 1.0
    m = re.match(r"^([-+])\s*(.*)$", t)
    if m:
        sign, t = (-1.0 if m.group(1) == "-" else 1.0), m.group(2)
    t = re.sub(r"^\((.*)\)$", r"\1", t).strip()  # "-(1/3)"
    m = re.match(r"^([-+])\s*(.*)$", t)
    if m:
        sign, t = sign * (-1.0 if m.group(1) == "-" else 1.0), m.group(2)
    num = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"
    patterns = [
        (rf"^\\frac\{{({num})\}}\{{({num})\}}", "frac"),
        (r"^\\frac(\d)(\d)", "frac"),
        (rf"^({num})\s*/\s*({num})", "frac"),
        (rf"^({num})", "num"),
    ]
    for pat, kind in patterns:
        m = re.match(pat, t)
        if not m:
            continue
        rest = t[m.end():].strip()
        percent = False
        pm = re.match(r"^(?:%|percent\b)\s*(.*)$", rest)
        if pm:
            percent, rest = True, pm.group(1).strip()
        if rest and not re.fullmatch(_UNIT_TAIL if units else _TEXT_UNIT_TAIL, rest):
            return None
        vals = [float(g.replace(",", "")) for g in m.groups()]
        if kind == "frac":
            if vals[1] == 0:
                return None
            return sign * vals[0] / vals[1], percent
        return sign * vals[0], percent
    return None


def _close(value: float, gold: float, published_tolerance: bool = False) -> bool:
    """Whether ``value`` matches ``gold``: exactly for an integer gold (up to floating-point
    rounding, :data:`FLOAT_SLACK`), else within :data:`REL_TOL` (:data:`ABS_TOL` near 0);
    ``published_tolerance``: within :data:`REL_TOL` whatever the gold (the toolkit's rule)."""
    if published_tolerance:
        return math.isclose(value, gold, rel_tol=REL_TOL, abs_tol=1e-9)
    if float(gold).is_integer():
        return abs(value - gold) <= FLOAT_SLACK * max(1.0, abs(gold))
    return math.isclose(value, gold, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def numbers_equal(pred: str, gold: str, units: bool = True, published_tolerance: bool = False) -> bool | None:
    """Numeric comparison (:func:`_close`); a percent answer matches ``x`` or ``x/100``.

    None when either side is not a plain number.
    """
    p, g = to_number(pred, units), to_number(gold, units)
    if p is None or g is None:
        return None
    (pv, p_pct), (gv, g_pct) = p, g
    candidates = [pv]
    if p_pct and not g_pct:
        candidates.append(pv / 100)
    if g_pct and not p_pct:
        candidates.append(pv * 100)
    return any(_close(c, gv, published_tolerance) for c in candidates)


# --------------------------------------------------------------------------- text forms

def normalize_text(s: str) -> str:
    """Lower case, ``\\text{}`` unwrapped, punctuation and spaces and a leading "the" dropped."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    s = s.replace("$", "").replace("\\", "").lower()
    s = re.sub(r"^\s*the\s+", "", s)
    s = re.sub(r"[^\w:/]+", "", s)
    return s


def _latex_key(s: str) -> str:
    """Whitespace-free LaTeX with cosmetic commands removed (a cheap equality before math-verify)."""
    s = _clean_latex(s)
    s = re.sub(r"\\(?:text|mathrm|mbox)\{\s*\}", "", s)
    return re.sub(r"\s+", "", s).rstrip(".")


def _drop_unit(gold: str) -> str:
    """An ASDiv answer without its unit in parentheses: ``"9 (apples)"`` → ``"9"``."""
    return re.sub(r"\s*\((?=[^()]*[A-Za-z])[^()]*\)\s*$", "", gold.strip()).strip() or gold.strip()


def _ratio(s: str) -> Fraction | None:
    """``a:b`` (or ``a/b``, ``\\frac{a}{b}``) as a fraction, integers only."""
    t = _clean_latex(s).replace(" ", "")
    m = re.fullmatch(r"(\d+):(\d+)", t) or re.fullmatch(r"(\d+)/(\d+)", t) or re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", t)
    if not m or int(m.group(2)) == 0:
        return None
    return Fraction(int(m.group(1)), int(m.group(2)))


def _asdiv_equal(pred: str, gold: str, published_tolerance: bool = False) -> bool:
    g, pred = _drop_unit(gold), _drop_unit(pred)
    if re.fullmatch(r"\d+:\d+", g.replace(" ", "")):  # a ratio or a clock time, kept whole
        if normalize_text(pred) == normalize_text(g):
            return True
        gr, pr = _ratio(g), _ratio(pred)
        return gr is not None and pr is not None and ":" in _clean_latex(pred) and gr == pr
    ordinal = re.fullmatch(r"(\d+)(?:st|nd|rd|th)", g)
    if ordinal:
        g = ordinal.group(1)
        pm = re.fullmatch(r"(\d+)(?:st|nd|rd|th)", normalize_text(pred))
        if pm:
            pred = pm.group(1)
    same = numbers_equal(pred, g, published_tolerance=published_tolerance)
    if same is not None:
        return same
    if to_number(g) is not None:  # numeric gold, non-numeric prediction
        return False
    return normalize_text(pred) == normalize_text(g)


# --------------------------------------------------------------------------- math-verify worker

def _as_latex(s: str) -> str:
    """An answer as LaTeX math for math-verify: ``$…$`` around it (inner ``$`` removed)."""
    return "$" + s.replace("$", "").strip() + "$"


def worker_main() -> None:
    """The worker process: JSON lines ``[pred, gold, seconds]`` on stdin → ``1``/``0`` on stdout."""
    import json
    import sys

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            pred, gold, seconds = json.loads(line)
            g = parse(_as_latex(gold), parsing_timeout=seconds)
            p = parse(_as_latex(pred), parsing_timeout=seconds)
            ok = bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=seconds))
        except Exception:  # noqa: BLE001 - any failure to verify counts as wrong
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


class _Verifier:
    """One long-lived math-verify worker process (started on first use, restarted after a timeout).

    A plain ``python -c`` child talking JSON lines over pipes: unlike ``multiprocessing``'s
    spawn it never re-imports the caller's ``__main__`` script.
    """

    STARTUP_S = 120.0

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def _readline(self, timeout_s: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, timeout_s))
        return self.proc.stdout.readline() if ready else None

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from lightreasoner.data.answers import worker_main; worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1,
        )
        if self._readline(self.STARTUP_S) != "ready\n":
            self.stop()
            raise RuntimeError("answers: the math-verify worker process did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            for stream in (self.proc.stdin, self.proc.stdout):
                stream.close()
        self.proc = None

    def verify(self, pred: str, gold: str, deadline_s: float) -> bool:
        """math-verify's verdict, or False when it takes longer than ``deadline_s`` seconds."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            inner = max(1, math.ceil(deadline_s))
            t0 = time.monotonic()
            try:
                self.proc.stdin.write(json.dumps([pred, gold, inner]) + "\n")
                self.proc.stdin.flush()
                reply = self._readline(deadline_s)
                if reply in ("1\n", "0\n"):
                    return reply == "1\n"
            except (OSError, ValueError):
                pass
            log.warning(
                "answers: math-verify gave no verdict within %.1fs for pred %r vs gold %r; counted as wrong",
                time.monotonic() - t0, pred[:80], gold[:80],
            )
            self.stop()
            return False


_VERIFIER = _Verifier()


def math_verify_equal(pred: str, gold: str, timeout_s: float = 5.0) -> bool:
    """math-verify's equivalence of two LaTeX answers, time-limited (see module docstring)."""
    return _VERIFIER.verify(pred, gold, timeout_s)


# --------------------------------------------------------------------------- equivalence

def is_equivalent(
    pred: str | None, gold: str, answer_type: str, timeout_s: float = 5.0, published_tolerance: bool = False
) -> bool:
    """Whether the extracted answer ``pred`` matches ``gold`` (see the module docstring).

    ``timeout_s`` bounds one math-verify comparison; running out counts as wrong.
    ``published_tolerance``: numbers within a relative 1e-4 whatever their kind (the toolkit's
    quirk); by default an integer gold is matched exactly.
    """
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type: expected one of {ANSWER_TYPES}, got {answer_type!r}")
    if pred is None or not str(pred).strip():
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    if answer_type == "choice":  # one letter (never a substring of "ABCD"), or an index 0-3 for the gold
        p = pred.upper() if len(pred) == 1 and pred.upper() in CHOICES else _choice_letter(pred)
        if len(gold) == 1 and gold.upper() in CHOICES:
            g = gold.upper()
        elif gold.isascii() and gold.isdigit() and int(gold) < len(CHOICES):
            g = CHOICES[int(gold)]
        else:
            g = None
        return p is not None and p == g
    if answer_type == "asdiv":
        return _asdiv_equal(pred, gold, published_tolerance)
    if answer_type == "numeric":
        same = numbers_equal(pred, gold, published_tolerance=published_tolerance)
        if same is not None:
            return same
        return math_verify_equal(pred, gold, timeout_s)
    # latex
    if _latex_key(pred) == _latex_key(gold):
        return True
    same = numbers_equal(pred, gold, units=False, published_tolerance=published_tolerance)
    if same is not None:
        return same
    return math_verify_equal(pred, gold, timeout_s)
