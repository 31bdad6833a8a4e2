import pytest

from analysis.core.answers import (check, extract_number_text, is_number, normalize_choice, normalize_gold,
                              normalize_math, normalize_number, normalize_text, numbers_equal,
                              states_only_a_number, token_f1)
from analysis.core.errors import StoplineError


@pytest.mark.parametrize("text,want", [
    ("so the total is 18 eggs.\n#### 18", "18"),
    ("A: 18", "18"),
    ("The total is $1,250.", "1250"),
    ("it is \\boxed{7}", "7"),
    ("\\boxed{\\$1,250.00}", "1250"),
    ("\\boxed{50\\%}", "50"),
    ("first 3, then 4, \\boxed{12} and later 99", "12"),      # a box wins over a later number
    ("#### 1,000,000", "1000000"),
    ("x = -5.", "-5"),
    ("costs €3.50 each", "3.5"),
    ("1/2 of them", "0.5"),                                  # canonical: a finite decimal
    ("about 0.50", "0.5"),
    ("\\boxed{\\text{42 apples}}", "42"),
    ("no number here", ""),
    ("\\boxed{7", "7"),                                        # an unclosed box (probe stopped at the brace)
    ("2,3,4", "4"),                                            # a list, not a thousands number
])
def test_number_extraction(text, want):
    assert normalize_number(extract_number_text(text)) == want


@pytest.mark.parametrize("a,b,eq", [
    ("18", "18.0", True), ("0.5", "1/2", True), ("\\frac{1}{2}", "0.5", True), ("1250", "1,250", True),
    ("3", "4", False), ("", "0", False), ("0.333333", "1/3", True),
    # stated numbers, in every spelling the number type accepts
    ("\\dfrac{1}{2}", "0.5", True), ("\\tfrac12", "1/2", True), ("-\\frac{1}{2}", "-0.5", True),
    ("\\frac{-3}{4}", "-0.75", True), ("(-5)", "-5", True), ("−5", "-5", True), ("+5", "5", True),
    ("50%", "50", True), ("50\\%", "50", True), ("\\$1,250.00", "1250", True), ("18 apples", "18", True),
    ("x = 5", "5", True), ("7 - 84 = -77", "-77", True), ("\\frac{14}{3}", "14/3", True),
    # expressions are never evaluated, whatever they equal
    ("7 - 84", "-77", False), ("7 + -84", "-77", False), ("1 + 5 - 16", "-10", False), ("\\sqrt{4}", "2", False),
    ("x+1", "1+x", False), ("2 x 3", "6", False), ("10^2", "100", False), ("3 hours and 20 minutes", "3", False),
    ("2,3,4", "234", False), ("Calculate 7 + -84.", "-77", False),
])
def test_numbers_equal(a, b, eq):
    assert numbers_equal(normalize_number(a), normalize_number(b)) is eq


@pytest.mark.parametrize("response,value", [
    ("\\boxed{3\\frac{1}{2}}", "3.5"), ("\\boxed{2\\tfrac{1}{4} hours}", "2.25"), ("\\boxed{1\\dfrac12}", "1.5"),
    ("\\boxed{3 \\frac{1}{2}}", "3.5"), ("\\boxed{3\\,\\frac{1}{2}}", "3.5"), ("\\boxed{-3\\frac{1}{2}}", "-3.5"),
    ("\\boxed{−2 \\frac{3}{4}}", "-2.75"), ("x = 5\\frac{1}{3}", "16/3"), ("#### 3\\frac{1}{2}", "3.5"),
    ("1\\frac{1}{2} cups", "1.5"), ("we get -3\\dfrac{1}{2} in the end", "-3.5"),   # unmarked: the last number whole
    ("so it is \\frac{7}{2}.", "3.5"), ("so it is -\\frac{7}{2}", "-3.5"),           # not its denominator
])
def test_a_mixed_number_is_its_whole_plus_its_fraction(response, value):
    """3\\frac{1}{2} read as the concatenation 31/2 = 15.5 (an EM of 1 against 15.5, 0 against 3.5)."""
    assert normalize_number(extract_number_text(response)) == value
    assert check(response, ["15.5"], "number")["em"] == 0.0


def test_a_number_glued_to_a_fraction_is_no_whole_part():
    """Only a whole number standing on its own is a mixed number's whole part; the rest still states no number."""
    for span in ("2\\cdot\\frac{1}{2}", "10^2\\frac{1}{2}", "2 + \\frac{1}{2}", "1.5\\frac12", "3\\frac{1}{0}"):
        assert not is_number(normalize_number(span)), span
    assert states_only_a_number("$3\\frac{1}{2}$")


@pytest.mark.parametrize("response,gold,em", [
    # the demo store's own cases: an unevaluated probe answer is not the gold it evaluates to
    ("So the final answer is \\boxed{7 - 84}", "-77", 0.0),
    ("\\boxed{1 + 5 - 16}", "-10", 0.0),
    ("\\boxed{-77}", "-77", 1.0),
    ("7 - 84 = -77", "-77", 1.0),             # no box: the last number stated
])
def test_number_type_needs_a_stated_number(response, gold, em):
    assert check(response, [gold], "number")["em"] == em


MATH500 = [   # (gold, a prediction that spells it another way, a wrong one)
    ("\\frac{14}{3}", "\\dfrac{14}{3}", "3"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", "2"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", "2"),
    ("6 - 5i", "6-5i", "6+5i"),
    ("[2,5)", "[2, 5)", "(2,5)"),
    ("\\frac{1}{2}", "0.5", "\\frac{1}{3}"),
]


@pytest.mark.parametrize("gold,same,wrong", MATH500)
def test_math_answers_compare_as_mathematical_objects(gold, same, wrong):
    assert check(f"so \\boxed{{{gold}}}", [gold], "math")["em"] == 1.0      # the gold itself, boxed
    assert check(f"\\boxed{{{same}}}", [gold], "math")["em"] == 1.0
    assert check(f"\\boxed{{{wrong}}}", [gold], "math")["em"] == 0.0
    assert normalize_gold([gold], "math")[0] != normalize_gold(["2"], "math")[0]   # never its last number


def test_math_gold_from_a_solution_and_its_normal_form():
    assert normalize_gold(["... so we get $\\boxed{\\dfrac{14}{3}}$."], "math") == ["\\frac{14}{3}"]
    assert normalize_math("\\left( 3, \\frac{\\pi}{2} \\right).") == "(3,\\frac{\\pi}{2})"
    assert check("The answer is $\\frac{14}{3}$.", ["\\frac{14}{3}"], "math")["em"] == 1.0


@pytest.mark.parametrize("response,letter", [
    ("D", "D"), ("(D)", "D"), ("D)", "D"), ("D.", "D"), ("Answer: D", "D"), ("the answer is (D)", "D"),
    ("B) looks wrong, so (C)", "C"), ("\\boxed{C}", "C"), ("\\boxed{(A)}", "A"), ("Answer: \\text{B}", "B"),
    ("Answer: (B", "B"),                                     # a probe cut before the closing parenthesis
])
def test_choice_letters(response, letter):
    assert check(response, [letter], "choice")["em"] == 1.0
    other = "A" if letter != "A" else "B"
    assert check(response, [other], "choice")["em"] == 0.0
    assert check(response, [f"({letter})"], "choice")["em"] == 1.0


@pytest.mark.parametrize("response", ["Answer: (d)", "answer: d", "the answer is (d).", "the answer is d",
                                      "Answer: d) since", "\\boxed{d}", "(d)", "d", "d."])
def test_a_lower_case_letter_marked_as_the_choice_counts(response):
    """'Answer: (d)' and '\\boxed{d}' normalised to '' (EM 0 against D), and a gold 'd' matched nothing."""
    assert check(response, ["D"], "choice")["em"] == 1.0
    assert check(response, ["d"], "choice")["em"] == 1.0
    assert check(response, ["C"], "choice")["em"] == 0.0


def test_a_lower_case_letter_in_prose_is_no_choice():
    for prose in ("the answer is a bit unclear", "I think (d) is right", "step (a) first, then b) after"):
        assert check(prose, ["A"], "choice")["norm"] == "", prose


def test_choice_without_a_letter_is_no_answer():
    assert check("I am not sure", ["A"], "choice") == {"raw": None, "norm": "", "em": 0.0, "f1": 0.0}
    assert normalize_choice("Dogs") == ""


def test_unknown_answer_type_names_the_known_ones():
    with pytest.raises(StoplineError, match="number, math, text, choice"):
        check("7", ["7"], "numeric")
    with pytest.raises(StoplineError, match="'numeric'"):
        normalize_gold(["7"], "numeric")


def test_number_check_end_to_end():
    assert check("So she pays $1,250.", ["1250"], "number")["em"] == 1.0
    assert check("#### 17", ["Natalia sold 48/2 = 24 clips.\n#### 18"], "number")["em"] == 0.0
    assert check("#### 18", ["Natalia sold ...\n#### 18"], "number")["em"] == 1.0


def test_squad_text_rules():
    assert normalize_text("The  Beatles!") == "beatles"
    assert normalize_text("An apple, a day") == "apple day"
    r = check("The answer is the Beatles.", ["Beatles", "John Lennon"], "text")
    assert r["em"] == 1.0 and r["f1"] == 1.0
    r = check("Answer: Paris, France", ["Paris"], "text")
    assert r["em"] == 0.0 and r["f1"] == pytest.approx(2 / 3)
    assert token_f1("new york city", "new york") == pytest.approx(0.8)
    assert check("", ["x"], "text") == {"raw": None, "norm": "", "em": 0.0, "f1": 0.0}


def test_a_text_answer_of_punctuation_and_articles_keeps_its_text():
    """'[]' and '#A A# A#' (reasoning-gym answers) normalised to '', which no prediction can match."""
    assert normalize_text("[]") == "[]" and normalize_text("#A  A# A#") == "#a a# a#"
    assert check("\\boxed{[]}", ["[]"], "text")["em"] == 1.0
    assert check("\\boxed{[0]}", ["[]"], "text")["em"] == 0.0
    assert check("\\boxed{#A A#}", ["#A A# A#"], "text")["em"] == 0.0
    for junk in ("...", "?", "- -"):                      # bare punctuation stays no answer (a probe's junk)
        assert normalize_text(junk) == ""


def test_states_only_a_number():
    """Which golds are one number: a grid's, a move's or a product's last number is not the answer."""
    for g in ("12", "-0.5", "1,250", "823/1575", "$\\dfrac{79}{173}$", "9.360000138304076e-18", "(-5)"):
        assert states_only_a_number(g), g
    for g in ("J2", "5 days", "2 × 433", "0 0 4 4", "1,2,3", "45a", "48.0 + 36.0i", "x = 5", ""):
        assert not states_only_a_number(g), g
