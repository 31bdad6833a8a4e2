import pytest

from analysis.answers import check, extract_number_text, normalize_number, normalize_text, numbers_equal, token_f1


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
    ("3", "4", False), ("", "0", False), ("\\sqrt{4}", "2", True), ("x+1", "1+x", True), ("0.333333", "1/3", True),
])
def test_numbers_equal(a, b, eq):
    assert numbers_equal(normalize_number(a), normalize_number(b)) is eq


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
