"""Accuracy by rules: answer extraction, options, strings, numbers and \\boxed{} math."""

import pytest

from core.choices import choice_index
from core.normalize import normalize, parse_number
from core.types import Sample
from rewards.answer import extract_answer, last_boxed
from rewards.mathcheck import looks_mathematical, math_equal
from rewards.rules import rule_accuracy
from rewards.turns import assistant_turns

CHOICES = ["red", "green", "blue", "yellow"]


def sample(answer: str, choices=(), data_source: str = "vstar") -> Sample:
    return Sample(id="t:0", data_source=data_source, messages=[], images=[],
                  question="What colour is the umbrella?", answer=answer, choices=list(choices))


# --- where the answer is ---------------------------------------------------------------------

def test_answer_is_the_text_inside_the_last_answer_tags():
    assert extract_answer(["<think>a</think><answer> B </answer>"]) == "B"
    assert extract_answer(["<answer>A</answer> then <answer>\nC\n</answer>"]) == "C"
    assert extract_answer(["<answer>A</answer>", "<think>zoom</think>", "<answer>D</answer>"]) == "D"
    assert extract_answer(["<answer>A</answer>", "<think>no answer in the last turn</think>"]) == "A"


@pytest.mark.parametrize("turns", [[], [""], ["<think>x</think>"], ["<answer>B"], ["B</answer>"]])
def test_no_complete_answer_tags_is_no_answer(turns):
    assert extract_answer(turns) is None


def test_assistant_turns_skip_the_tool_results_the_loop_inserted():
    text = ("<think>zoom</think><tool_call>{}</tool_call><|im_end|>\n"
            "<|im_start|>user\n<tool_response>Answer as <answer>...</answer></tool_response>"
            "<|im_end|>\n<|im_start|>assistant\n<think>seen</think><answer>B</answer><|im_end|>")
    assert assistant_turns(text) == ["<think>zoom</think><tool_call>{}</tool_call>",
                                     "<think>seen</think><answer>B</answer>"]
    assert assistant_turns("plain text, no template") == ["plain text, no template"]
    # The instruction's '<answer>...</answer>' inside a tool result is never the policy's answer.
    unanswered = text.replace("<answer>B</answer>", "")
    assert extract_answer(assistant_turns(unanswered)) is None


def test_last_boxed_matches_braces():
    assert last_boxed(r"so \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{1} or rather \boxed{ {2}+3 }") == "{2}+3"
    assert last_boxed(r"\boxed{1") is None
    assert last_boxed("no box") is None


# --- multiple choice -------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", [
    "B", "b", "(B)", "B.", "B)", "B:", "B. green", "(B) green", "B: Green.", "green", "Green.",
    "The answer is B", "Answer: (B)", "option B", "the green", "  B  ",
])
def test_every_way_of_naming_option_b_is_right(prediction):
    assert rule_accuracy(prediction, sample("B", CHOICES)) == 1.0


@pytest.mark.parametrize("prediction", ["A", "(C)", "D. yellow", "blue", "The answer is A"])
def test_another_option_is_wrong(prediction):
    assert rule_accuracy(prediction, sample("B", CHOICES)) == 0.0


@pytest.mark.parametrize("prediction", [
    "B. blue",  # letter and text disagree: a judge must read it
    "I think it is green",
    "B or C",
    "purple",
])
def test_answers_naming_no_single_option_are_undecided(prediction):
    assert rule_accuracy(prediction, sample("B", CHOICES)) is None


@pytest.mark.parametrize("prediction", ["", "  ", ".", "\\boxed{}"])
def test_empty_answers_are_wrong_without_asking_a_judge(prediction):
    assert rule_accuracy(prediction, sample("B", CHOICES)) == 0.0
    assert rule_accuracy(prediction, sample("red car")) == 0.0


def test_boxed_option_letters_are_options():
    """ThinkLite-VL math data asks multiple choice and wants the answer in \\boxed{}."""
    assert rule_accuracy(r"\boxed{B}", sample("B", CHOICES)) == 1.0
    assert rule_accuracy(r"so \boxed{(C)}", sample("B", CHOICES)) == 0.0
    assert rule_accuracy(r"\boxed{B}", sample("B", data_source="thinklite_eureka")) == 1.0
    assert rule_accuracy("B", sample(r"\boxed{B}", data_source="thinklite_eureka")) == 1.0


def test_a_single_letter_gold_can_still_be_a_math_symbol():
    assert rule_accuracy(r"\boxed{x}", sample("x", data_source="thinklite_eureka")) == 1.0
    assert rule_accuracy(r"\boxed{y}", sample("x", data_source="thinklite_eureka")) == 0.0


def test_ground_truth_given_as_option_text_is_read_as_that_option():
    assert rule_accuracy("B", sample("green", CHOICES)) == 1.0
    assert rule_accuracy("(c)", sample("green", CHOICES)) == 0.0


def test_option_texts_that_are_numbers_compare_by_value():
    assert rule_accuracy("12.0", sample("12", ["10", "12", "14"])) == 1.0
    assert rule_accuracy("(c)", sample("12", ["10", "12", "14"])) == 0.0


def test_letter_ground_truth_without_options_reads_bare_letters_only():
    assert rule_accuracy("(b)", sample("B")) == 1.0
    assert rule_accuracy("C.", sample("B")) == 0.0
    assert rule_accuracy("green", sample("B")) is None
    assert choice_index("B", []) == 1 and choice_index("B. green", []) is None


# --- strings and numbers ---------------------------------------------------------------------

def test_normalize_ignores_case_spacing_edge_punctuation_and_articles():
    assert normalize("  The Red   Car. ") == "red car"
    assert normalize("an apple!") == "apple"
    assert normalize("A") == "a"  # an option letter, not an article
    assert normalize('"(stop)"') == "stop"


@pytest.mark.parametrize("prediction, gold, expected", [
    ("The Red Car.", "red car", 1.0),
    ("YES", "yes", 1.0),
    ("No.", "yes", 0.0),
    ("false", "True", 0.0),
    ("a red mug", "red", None),  # words differ: only a judge can tell
    ("blue", "red", None),
])
def test_free_text_matches_after_normalizing(prediction, gold, expected):
    assert rule_accuracy(prediction, sample(gold)) == expected


@pytest.mark.parametrize("text, number", [
    ("12", 12.0), ("-0.5", -0.5), (".5", 0.5), ("1,024", 1024.0), ("$3.50", 3.5), ("12%", 12.0),
    ("3.", 3.0), ("1e3", 1000.0), ("1e999", None), ("12 apples", None), ("1,02", None),
    ("twelve", None), ("", None),
])
def test_parse_number_reads_whole_answers_only(text, number):
    assert parse_number(text) == number


@pytest.mark.parametrize("prediction, gold, expected", [
    ("1024", "1,024", 1.0),
    ("12.0", "12", 1.0),
    ("$3.5", "3.50", 1.0),
    ("-.5", "-0.5", 1.0),
    ("0.30000000000000004", "0.3", 1.0),
    ("4", "3", 0.0),
    ("3.1", "3", 0.0),
    (".5", "5", 0.0),  # a leading '.' is a decimal point, not punctuation to strip
    (".5", "0.5", 1.0),
])
def test_numbers_compare_by_value(prediction, gold, expected):
    assert rule_accuracy(prediction, sample(gold)) == expected


# --- \boxed{} math, checked with math-verify -------------------------------------------------

@pytest.mark.parametrize("prediction, gold", [
    (r"\boxed{\frac{1}{2}}", "0.5"),
    (r"so the result is \boxed{0.5}", r"\frac{1}{2}"),
    (r"\boxed{x+1}", "1+x"),
    (r"\boxed{\sqrt{2}}", "2^{1/2}"),
    (r"\boxed{(1, 2)}", r"\boxed{(1,2)}"),
    (r"\boxed{2\pi}", r"2 \pi"),
    ("1/3", r"\frac{1}{3}"),
])
def test_equal_math_answers_are_right(prediction, gold):
    assert rule_accuracy(prediction, sample(gold, data_source="thinklite_eureka")) == 1.0


def test_boxed_numbers_that_differ_are_wrong():
    assert rule_accuracy(r"\boxed{4}", sample(r"\boxed{3}")) == 0.0


def test_math_answers_not_proven_equal_are_left_to_the_judge():
    # math-verify proves equality, not difference: 'x+2' vs 'x+1' goes to the judge.
    assert rule_accuracy(r"\boxed{x+2}", sample("x+1")) is None


def test_words_are_never_handed_to_math_verify():
    """math-verify reads letters as symbols: 'top left' would equal 'left top' (a product)."""
    assert math_equal("top left", "left top") and math_equal("no", "on")  # why the guard exists
    assert not looks_mathematical("red") and not looks_mathematical("3 apples")
    assert looks_mathematical(r"\frac{1}{2}") and looks_mathematical("x+1")
    assert looks_mathematical(r"2\pi") and looks_mathematical("(1, 2)")
    assert rule_accuracy("left top", sample("top left")) is None
    assert rule_accuracy("on", sample("no")) is None
