"""Answer extraction and exact match, by answer type (domain.md, "Exact match").

A dataset or an import chooses one of four types, and the run records it; any other name is an error that
lists these four.

``number`` (GSM8K and the like): the span is the last ``\\boxed{...}``, else the text after ``####``, else
the last number in the text (a LaTeX fraction or mixed number read whole). The prediction matches only if the
span *states a number*: an integer or a decimal, with thousands separators, a sign (``-``, ``−``, ``+``) or
parentheses around a signed number; a plain or LaTeX fraction (``1/2``, ``\\frac{1}{2}``, ``\\dfrac``,
``\\tfrac``, ``-\\frac{1}{2}``); a LaTeX mixed number (``3\\frac{1}{2}`` is 3.5, ``-3\\frac{1}{2}`` is -3.5); a
percentage, currency or unit around exactly one number (``50%``, ``\\$1,250.00``, ``18 apples``); or an
equation whose right-hand side is such a number (``x = 5``, ``7 - 84 = -77``). Numbers compare as
numbers (``18`` = ``18.0``, ``0.5`` = ``1/2``; decimals within a relative 1e-6). An expression is never
evaluated: ``7 - 84`` against -77, ``\\sqrt{4}`` against 2, or a restated question, is not a match (the
normalised form keeps the expression, so consistency rules still see a stable answer).

``math`` (MATH-500, AIME, Olympiad sets): gold and prediction are LaTeX answers, both parsed with math-verify
and compared as mathematical objects (fractions, radicals, tuples, intervals, complex numbers); equivalent
spellings match (``\\dfrac`` and ``\\frac``, dropped ``\\left``/``\\right``, spacing). A gold is never
reduced to its last number. The normalised form is the LaTeX with those spellings unified.

``text`` (NQ-open, TriviaQA): SQuAD normalisation (lower case, no punctuation, no articles a/an/the, single
spaces); EM is the max over the gold aliases, token F1 likewise.

``choice`` (GPQA, MMLU-Pro): the chosen letter, from ``D``, ``(D)``, ``D)``, ``D.``, ``Answer: D``, ``the answer
is (D)`` or a box, against the gold letter; in either case (``(d)``, ``Answer: d``), where it is plainly marked
as the choice.

About 400 lines: the four types' extraction, normalisation and matching, with ``extract``/``normalize``/``score``
dispatching on the type, in one place so the rules above read as one specification.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from fractions import Fraction
from functools import lru_cache

from analysis.core.errors import StoplineError

NUMBER = "number"
MATH = "math"
TEXT = "text"
CHOICE = "choice"
ANSWER_TYPES = (NUMBER, MATH, TEXT, CHOICE)

# A number as people write it: optional sign, thousands separators, decimals, or a plain fraction.
_NUM_RE = re.compile(r"(?<![\w.])[-−]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|[-−]?\d+(?:\.\d+)?(?:/\d+)?|[-−]?\.\d+")
_HASH_RE = re.compile(r"####\s*(.*)")
_CURRENCY = "$€£¥₹"
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox|textrm)\{([^{}]*)\}")
_LATEX_FRAC = re.compile(r"(-|−)?\\[dt]?frac\s*(?:\{\s*([-−]?\d+(?:\.\d+)?)\s*\}|(\d))\s*(?:\{\s*(\d+(?:\.\d+)?)\s*\}|(\d))")
# A mixed number, ``3\frac{1}{2}`` (also \dfrac, \tfrac, a space or a thin space before the fraction, a sign in
# front): 3 + 1/2, the sign applying to the whole, as math-verify reads it. A whole number glued to what comes
# before it (``x2``, ``1.2``, ``10^2``) is no whole part.
_MIXED_WHOLE = r"(?<![\w.,^_}/])([-−])?(\d+)(?:[ \t]|\\[,;!])*"
_FRAC_ARGS = r"\\[dt]?frac\s*(?:\{\s*(\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))"
_LATEX_MIXED = re.compile(_MIXED_WHOLE + _FRAC_ARGS)
# The last number of an unmarked response, read whole when it is a LaTeX fraction or mixed number (the last
# plain number of ``1\frac{1}{2} cups`` is its denominator): the match, group 0.
_LAST_NUMBER_RE = re.compile(f"(?:{_MIXED_WHOLE})?" + _LATEX_FRAC.pattern + "|" + _NUM_RE.pattern)
_OPERATORS = re.compile(r"[\\^_=+*/()\[\]{}<>|]|(?<=\s)[-−x×÷](?=\s)")


def check_answer_type(answer_type: str) -> str:
    """The answer type, or an error naming the known ones."""
    if answer_type not in ANSWER_TYPES:
        raise StoplineError(f"unknown answer type {answer_type!r}; the known ones are {', '.join(ANSWER_TYPES)}",
                            field="answer_type")
    return answer_type


def find_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{}``), braces balanced; an unclosed box at the end
    of a trial answer (the probe stops at the closing brace) yields the text after it."""
    idx = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if idx < 0:
        return None
    start = text.index("{", idx) + 1
    end = closed_box_end(text, start)
    return text[start:end - 1] if end else text[start:]


def closed_box_end(text: str, i: int) -> int | None:
    """For a box whose content starts at ``i`` (just after its ``{``): the index just past its closing
    brace, or None when it is not closed."""
    depth = 1
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return None


def answer_ended(text: str) -> bool:
    """Whether a probe's text (what the model wrote after the cue's open box) holds a whole trial answer: the
    box is closed (the braces inside it balanced, as in ``\\frac{14}{3}``) or the line has ended."""
    return "\n" in text or closed_box_end(text, 0) is not None


def probe_answer(text: str) -> str:
    """The trial answer in a probe's text: up to the brace that closes the cue's box, or the line's end."""
    end = closed_box_end(text, 0)
    return (text[:end - 1] if end else text).split("\n")[0].strip()


def _marked_span(text: str, hashes: bool = True) -> str | None:
    """The span a response marks as its answer: the last non-empty box, else (``hashes``) the text after
    the last '####'."""
    boxed = find_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    found = _HASH_RE.findall(text) if hashes else []
    return found[-1].strip() if found and found[-1].strip() else None


def extract_number_text(text: str) -> str | None:
    """The answer span of a numeric response, before normalisation (None when it states none)."""
    if text is None:
        return None
    span = _marked_span(text)
    if span is not None:
        return span
    last = None
    for last in _LAST_NUMBER_RE.finditer(text):
        pass
    return last.group(0) if last else None


_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _to_fraction(s: str) -> Fraction | None:
    s = s.replace("−", "-").strip()
    if "," in s:
        if not _THOUSANDS.fullmatch(s):
            return None                         # '2,3,4' is a list, not a number
        s = s.replace(",", "")
    if s.startswith("+"):
        s = s[1:]
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


_PLAIN_INT = re.compile(r"-?[1-9]\d{0,17}|0")


def _frac_to_slash(m: re.Match) -> str:
    sign, num, num1, den, den1 = m.groups()
    num, den = num or num1, den or den1
    neg = (sign is not None) != num.startswith(("-", "−"))
    return ("-" if neg else "") + num.lstrip("-−") + "/" + den


def _mixed_to_slash(m: re.Match) -> str:
    sign, whole, num, num1, den, den1 = m.groups()
    den = int(den or den1)
    if den == 0:
        return m.group(0)                       # left to _LATEX_FRAC, and states no number
    f = int(whole) + Fraction(int(num or num1), den)
    return str(-f if sign else f)


def _clean_number_span(span: str) -> str:
    s = _LATEX_WRAPPERS.sub(r"\1", span)
    for a, b in (("\\$", ""), ("\\%", "%"), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\left", ""), ("\\right", ""),
                 ("$", "")):
        s = s.replace(a, b)
    for c in _CURRENCY:
        s = s.replace(c, "")
    s = _LATEX_FRAC.sub(_frac_to_slash, _LATEX_MIXED.sub(_mixed_to_slash, s))
    s = s.strip().rstrip(".").strip()
    while len(s) > 2 and s[0] == "(" and s[-1] == ")" and _to_fraction(s[1:-1]) is not None:
        s = s[1:-1].strip()                     # (-5) -> -5
    return s


def _stated_number(s: str) -> Fraction | None:
    """The number a cleaned span states, or None when it states none (an expression, several numbers)."""
    f = _to_fraction(s.rstrip("%").strip())
    if f is not None:
        return f
    nums = _NUM_RE.findall(s)
    if len(nums) == 1 and not _OPERATORS.search(_NUM_RE.sub(" ", s)):
        return _to_fraction(nums[0])            # one number among words, units or a percent sign
    return None


@lru_cache(maxsize=1 << 16)
def normalize_number(span: str | None) -> str:
    """Canonical string of a numeric answer: '1,250.00 dollars' -> '1250', '\\frac{1}{2}' -> '0.5',
    'x = -5' -> '-5'. '' when there is no answer. A span that states no number (an expression such as
    '7 - 84') keeps its cleaned text, which never equals a number (``numbers_equal``)."""
    if not span:
        return ""
    if _PLAIN_INT.fullmatch(span):
        return span
    s = _clean_number_span(span)
    f = _stated_number(s)
    if f is None and "=" in s:
        f = _stated_number(s.rsplit("=", 1)[1].strip())   # an equation states its right-hand side
    return _fraction_str(f) if f is not None else s


def _fraction_str(f: Fraction) -> str:
    if f.denominator == 1:
        return str(f.numerator)
    # Finite decimal if possible, else p/q.
    d = f.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:
        return format(float(f), ".12g")
    return f"{f.numerator}/{f.denominator}"


def states_only_a_number(s: str) -> bool:
    """Whether a gold answer is one number and nothing else ('12', '-0.5', '1,250', '823/1575', '$\\dfrac{1}{2}$',
    '9.4e-18'); not 'J2', '5 days', '2 × 433' or a grid of numbers, whose last number is not the answer."""
    return _to_fraction(_clean_number_span(s).rstrip("%").strip()) is not None


def is_number(norm: str) -> bool:
    """Whether a normalised number answer states a number (and not an expression)."""
    return bool(norm) and (_PLAIN_INT.fullmatch(norm) is not None or _to_fraction(norm) is not None)


@lru_cache(maxsize=65536)
def numbers_equal(a: str, b: str) -> bool:
    """Numeric equality of two normalised answers; an answer that is not a number equals nothing."""
    if not a or not b:
        return False
    fa, fb = _to_fraction(a), _to_fraction(b)
    if fa is None or fb is None:
        return False
    return fa == fb or abs(fa - fb) <= Fraction(1, 10**6) * max(1, abs(fb))


# --- math (LaTeX answers, compared with math-verify) ------------------------------------------------------
_MATH_SPELLINGS = [(re.compile(r"\\[dt]frac"), r"\\frac"), (re.compile(r"\\(?:left|right|displaystyle)(?![a-zA-Z])"), ""),
                   (re.compile(r"\\[!,;:> ]|~"), ""), (re.compile(r"\s+"), ""), (re.compile(r"^\$+|\$+$"), "")]


@lru_cache(maxsize=1 << 16)
def normalize_math(span: str | None) -> str:
    """A LaTeX answer with equivalent spellings unified (``\\dfrac`` -> ``\\frac``, no ``\\left``/``\\right``,
    no spacing commands or spaces, no trailing period): the identity consistency rules compare."""
    if not span:
        return ""
    s = span.strip()
    for rx, rep in _MATH_SPELLINGS:
        s = rx.sub(rep, s)
    return s.rstrip(".")


def _time_limit() -> int | None:
    """math-verify's time limit (s) guards against pathological LaTeX with a signal, which only the main
    thread may set: other threads (the dashboard's) run without one, and its one-time warning is muted."""
    import logging
    import threading
    if threading.current_thread() is threading.main_thread():
        return 5
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return None


@lru_cache(maxsize=1 << 14)
def _math_parse(s: str):
    from math_verify import parse
    limit = _time_limit()
    return parse("$" + s + "$", parsing_timeout=limit) or parse(s, parsing_timeout=limit)


def math_parses(norm: str) -> bool:
    """Whether math-verify parses a LaTeX answer."""
    try:
        return bool(norm) and bool(_math_parse(norm))
    except Exception:  # as in math_equal: unparseable
        return False


@lru_cache(maxsize=1 << 16)
def math_equal(pred: str, gold: str) -> bool:
    """Two LaTeX answers as mathematical objects (math-verify): fractions, radicals, tuples, intervals,
    complex numbers; an unparseable answer equals nothing."""
    if not pred or not gold:
        return False
    if pred == gold:
        return True
    try:
        from math_verify import verify
        g, p = _math_parse(gold), _math_parse(pred)
        return bool(g and p and verify(g, p, timeout_seconds=_time_limit()))
    except Exception:  # math-verify raises on odd input; an unparseable answer is simply not equal
        return False


def extract_math(text: str | None) -> str | None:
    """The answer span of a LaTeX response: the last box, else the text after '####' or 'answer is', else
    the last $...$ of the text."""
    if not text:
        return None
    span = _marked_span(text)
    if span is not None:
        return span
    m = _ANSWER_IS.findall(text)
    if m:
        return m[-1].strip().splitlines()[0].strip().strip("$").rstrip(".").strip()
    dollars = re.findall(r"\$([^$]+)\$", text)
    return dollars[-1].strip() if dollars else None


# --- choice (multiple-choice letters) ---------------------------------------------------------------------
_LETTER = r"([A-Z])"
# A lower-case letter counts where it is plainly marked as the choice: the whole span (``d``, ``(d)``), or after
# 'answer'/'option'/'choice' in parentheses, before ')' or at the end of its line ('Answer: (d)', 'answer is d.');
# never in running prose ('the answer is a bit off', 'step (a)').
_CHOICE_PATTERNS = [re.compile(p) for p in (
    r"^\(?([A-Za-z])\)?[.:)]?$",                                          # D, (D), D), D., d, (d)
    r"(?i:answer|option|choice)\s*(?:is|:)?\s*[:\s]*(?:\(([A-Za-z])\)|\(?" + _LETTER
    + r"\)?(?![a-zA-Z])|([a-z])(?:\)|(?=\.?[ \t]*(?:\n|$))))",              # Answer: D, answer is (D), Answer: (d)
    r"\(" + _LETTER + r"\)",                                                # ... (D) ...
    r"(?<![A-Za-z])" + _LETTER + r"\)",                                     # ... D) ...
)]


def _letter(m: re.Match) -> str:
    return next(g for g in m.groups() if g)


def extract_choice(text: str | None) -> str | None:
    """The chosen letter's span: a box, else 'Answer: D' / 'the answer is (D)', else the last (D) or D)."""
    if not text:
        return None
    span = _marked_span(text, hashes=False)
    if span is not None:
        return span
    t = _LATEX_WRAPPERS.sub(r"\1", text).strip()
    for rx in _CHOICE_PATTERNS:
        found = list(rx.finditer(t))
        if found:
            return _letter(found[-1])
    return None


def normalize_choice(span: str | None) -> str:
    """The letter of a choice span ('(D)', 'D)', 'Answer: D', '\\text{D}', 'd', 'Answer: (d)' -> 'D'); '' when
    it names none."""
    if not span:
        return ""
    t = _LATEX_WRAPPERS.sub(r"\1", span).strip()
    for rx in _CHOICE_PATTERNS[:2]:
        m = rx.search(t)
        if m:
            return _letter(m).upper()
    return ""


# --- short text -----------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_EMPTY_LISTS = ("[]", "{}", "()", "[[]]")


def normalize_text(s: str | None) -> str:
    """SQuAD normalisation: lower case, drop punctuation, the articles a/an/the, and extra white space. An
    answer that is nothing but punctuation and articles keeps its lower-cased text when it is one of letters
    ('#A A#') or an empty list ('[]', '{}', '()'), so that it can still be matched; bare punctuation ('...', '?')
    is no answer."""
    if not s:
        return ""
    low = s.lower()
    out = " ".join(_ARTICLES.sub(" ", "".join(ch for ch in low if ch not in _PUNCT)).split())
    if out:
        return out
    kept = " ".join(low.split())
    return kept if any(ch.isalnum() for ch in kept) or kept.replace(" ", "") in _EMPTY_LISTS else ""


_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", re.IGNORECASE)


def extract_text_answer(text: str | None) -> str | None:
    """The answer span of a short-text response: last boxed, else 'answer is X' / 'Answer: X', else the
    last non-empty line."""
    if not text:
        return None
    span = _marked_span(text, hashes=False)
    if span is not None:
        return span
    m = _ANSWER_IS.findall(text)
    if m:
        return m[-1].strip().splitlines()[0].strip().rstrip(".")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize_text(pred).split(), normalize_text(gold).split()
    if not p or not g:
        return float(p == g)
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


# --- one entry point ------------------------------------------------------------------------------------
def extract(text: str | None, answer_type: str) -> str | None:
    """The answer span of a response (before normalisation)."""
    return _EXTRACT[check_answer_type(answer_type)](text)


def normalize(span: str | None, answer_type: str) -> str:
    return _NORMALIZE[check_answer_type(answer_type)](span)


def normalize_gold(gold: list[str], answer_type: str) -> list[str]:
    """Gold aliases, normalised. A numeric gold may be a whole GSM8K solution ending in '#### 18'; a math
    gold may be a solution with a box (its box is the answer) or the bare LaTeX answer."""
    check_answer_type(answer_type)
    return [_gold_alias(g, answer_type) for g in gold]


@lru_cache(maxsize=1 << 16)
def _gold_alias(g: str, answer_type: str) -> str:
    """One gold alias, normalised (once per distinct alias: a dataset's golds repeat, and an import reads each
    question's gold when it checks the file and again when it scores)."""
    if answer_type == NUMBER:
        return normalize_number(extract_number_text(g))
    if answer_type == MATH:
        return normalize_math(find_boxed(g) or g)
    if answer_type == CHOICE:
        return normalize_choice(g)
    return normalize_text(g)


def score(pred_norm: str, gold_norm: list[str], answer_type: str, pred_raw: str | None = None) -> tuple[float, float]:
    """(EM, F1) of a normalised prediction against normalised gold aliases; F1 equals EM but for text."""
    check_answer_type(answer_type)
    if not pred_norm:
        return 0.0, 0.0
    if answer_type == TEXT:
        em = float(any(pred_norm == g for g in gold_norm))
        f1 = max((token_f1(pred_norm, g) for g in gold_norm), default=0.0)
        return em, f1
    same = {NUMBER: numbers_equal, MATH: math_equal, CHOICE: str.__eq__}[answer_type]
    em = float(any(same(pred_norm, g) for g in gold_norm))
    return em, em


def check(response: str, gold: list[str], answer_type: str) -> dict:
    """Extract, normalise and score one response: the one call most callers need."""
    raw = extract(response, answer_type)
    norm = normalize(raw, answer_type)
    em, f1 = score(norm, normalize_gold(gold, answer_type), answer_type)
    return {"raw": raw, "norm": norm, "em": em, "f1": f1}


_EXTRACT = {NUMBER: extract_number_text, MATH: extract_math, TEXT: extract_text_answer, CHOICE: extract_choice}
_NORMALIZE = {NUMBER: normalize_number, MATH: normalize_math, TEXT: normalize_text, CHOICE: normalize_choice}
