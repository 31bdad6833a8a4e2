"""Answer extraction and exact-match checking (domain.md, "Exact match").

Numbers: take the last ``\\boxed{...}``, else the text after ``####``, else the last number; strip commas,
currency and units; compare numerically. Anything that is not a plain number (fractions in LaTeX, symbolic
expressions) is checked with math-verify. Short text: SQuAD normalisation, EM and token F1 as the max over
the gold aliases.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from fractions import Fraction
from functools import lru_cache

NUMBER = "number"
TEXT = "text"
ANSWER_TYPES = (NUMBER, TEXT)

# A number as people write it: optional sign, thousands separators, decimals, or a plain fraction.
_NUM_RE = re.compile(r"(?<![\w.])[-−]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|[-−]?\d+(?:\.\d+)?(?:/\d+)?|[-−]?\.\d+")
_HASH_RE = re.compile(r"####\s*(.*)")
_CURRENCY = "$€£¥₹"
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


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


def extract_number_text(text: str) -> str | None:
    """The answer span of a numeric response, before normalisation (None when it states none)."""
    if text is None:
        return None
    boxed = find_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    hashes = _HASH_RE.findall(text)
    if hashes and hashes[-1].strip():
        return hashes[-1].strip()
    nums = _NUM_RE.findall(text)
    return nums[-1] if nums else None


def _to_fraction(s: str) -> Fraction | None:
    s = s.replace("−", "-").replace(",", "").strip()
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


_PLAIN_INT = re.compile(r"-?[1-9]\d{0,17}|0")


@lru_cache(maxsize=1 << 16)
def normalize_number(span: str | None) -> str:
    """Canonical string of a numeric answer: '1,250.00 dollars' -> '1250', '\\frac{1}{2}' stays LaTeX.

    Returns '' when there is no answer. A span that holds one plain number is reduced to it; anything else
    (LaTeX, expressions) is kept, lightly cleaned, for math-verify.
    """
    if not span:
        return ""
    if _PLAIN_INT.fullmatch(span):
        return span
    s = _LATEX_WRAPPERS.sub(r"\1", span)
    s = s.replace("\\$", "").replace("\\%", "").replace("\\!", "").replace("\\,", "")
    for c in _CURRENCY:
        s = s.replace(c, "")
    s = s.strip().rstrip(".").strip()
    nums = _NUM_RE.findall(s)
    # Exactly one number among words/units ("18 apples", "1,250 dollars", "50%") -> that number.
    stripped = _NUM_RE.sub("", s)
    if len(nums) == 1 and not re.search(r"[\\^_=+*/()\[\]{}]", stripped):
        f = _to_fraction(nums[0])
        if f is not None:
            return _fraction_str(f)
    f = _to_fraction(s)
    if f is not None:
        return _fraction_str(f)
    return s


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


@lru_cache(maxsize=65536)
def numbers_equal(a: str, b: str) -> bool:
    """Numeric (then symbolic, via math-verify) equality of two normalised answers."""
    if not a or not b:
        return False
    if a == b:
        return True
    fa, fb = _to_fraction(a), _to_fraction(b)
    if fa is not None and fb is not None:
        return abs(fa - fb) <= Fraction(1, 10**6) * max(1, abs(fb))
    return _math_verify(a, b)


def _math_verify(a: str, b: str) -> bool:
    try:
        from math_verify import parse, verify
        ga = parse("$" + b + "$") or parse(b)
        pa = parse("$" + a + "$") or parse(a)
        return bool(ga and pa and verify(ga, pa))
    except Exception:  # math-verify raises on odd input; an unparseable answer is simply not equal
        return False


# --- short text -----------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_text(s: str | None) -> str:
    """SQuAD normalisation: lower case, drop punctuation, the articles a/an/the, and extra white space."""
    if not s:
        return ""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", re.IGNORECASE)


def extract_text_answer(text: str | None) -> str | None:
    """The answer span of a short-text response: last boxed, else 'answer is X' / 'Answer: X', else the
    last non-empty line."""
    if not text:
        return None
    boxed = find_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
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
    return extract_number_text(text) if answer_type == NUMBER else extract_text_answer(text)


def normalize(span: str | None, answer_type: str) -> str:
    return normalize_number(span) if answer_type == NUMBER else normalize_text(span)


def normalize_gold(gold: list[str], answer_type: str) -> list[str]:
    """Gold aliases, normalised. A numeric gold may be a whole GSM8K solution ending in '#### 18'."""
    if answer_type == NUMBER:
        return [normalize_number(extract_number_text(g)) for g in gold]
    return [normalize_text(g) for g in gold]


def score(pred_norm: str, gold_norm: list[str], answer_type: str, pred_raw: str | None = None) -> tuple[float, float]:
    """(EM, F1) of a normalised prediction against normalised gold aliases; F1 equals EM for numbers."""
    if not pred_norm:
        return 0.0, 0.0
    if answer_type == NUMBER:
        em = float(any(numbers_equal(pred_norm, g) for g in gold_norm))
        return em, em
    em = float(any(pred_norm == g for g in gold_norm))
    f1 = max((token_f1(pred_norm, g) for g in gold_norm), default=0.0)
    return em, f1


def check(response: str, gold: list[str], answer_type: str) -> dict:
    """Extract, normalise and score one response: the one call most callers need."""
    raw = extract(response, answer_type)
    norm = normalize(raw, answer_type)
    em, f1 = score(norm, normalize_gold(gold, answer_type), answer_type)
    return {"raw": raw, "norm": norm, "em": em, "f1": f1}
