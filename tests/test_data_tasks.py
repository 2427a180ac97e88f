"""Synthetic tasks: the registry, validated knobs, strict verifiers on canonical and adversarial
completions, and R1's answer format read strictly (against the sloppy verifier it replaces)."""

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlakit.data import (
    AdditionTask,
    CountdownProblem,
    Problem,
    ToolCallProblem,
    WordProblem,
    format_ok,
    format_reasoning,
    get_task,
    key_string,
    last_answer,
    list_tasks,
    parse_completion,
    parse_expression,
    strict_answer,
    verify_sloppy,
)
from mlakit.data.countdown import ExpressionError, check_solution
from mlakit.data.refusal import FORBIDDEN, REFUSAL, RefusalProblem, RefusalTask
from mlakit.data.toolcall import check_call
from mlakit.tokenizer import CharTokenizer

# --- the registry and the knobs ----------------------------------------------------------------


def test_registry_lists_the_tasks_and_names_the_valid_ones():
    assert list_tasks() == ["addition", "countdown", "toolcall", "wordproblem"]
    with pytest.raises(ValueError, match=r"unknown task 'sums'; valid tasks: addition, countdown, toolcall, "
                                         r"wordproblem"):
        get_task("sums")
    with pytest.raises(ValueError, match=r"task 'addition' has no knob 'digits'; its knobs: min_digits, "
                                         r"max_digits, with_steps, num_operands"):
        get_task("addition", digits=3)


@pytest.mark.parametrize("name, knobs, message", [
    ("addition", {"max_digits": 0}, r"max_digits=0 is invalid: must be an integer in \[min_digits=1, 18\]"),
    ("addition", {"num_operands": 1}, r"num_operands=1 is invalid: must be an integer in \[2, 8\]"),
    ("addition", {"min_digits": 2.5}, r"min_digits=2.5 is invalid: must be an integer in \[1, 18\]"),
    ("countdown", {"num_numbers": 9}, r"num_numbers=9 is invalid: must be an integer in \[2, 6\]"),
    ("countdown", {"min_used": 5}, r"min_used=5 is invalid: must be an integer in \[2, 4\]"),
    ("toolcall", {"max_value": 0}, r"max_value=0 is invalid: must be an integer in \[1, 1000000000\]"),
    ("toolcall", {"functions": ("add", "divide")}, r"functions=\('add', 'divide'\) is invalid"),
    ("wordproblem", {"operations": "*"}, r"operations='\*' is invalid: must be '\+', '-' or '\+-'"),
    ("wordproblem", {"max_digits": True}, r"max_digits=True is invalid"),
])
def test_bad_knobs_name_the_field_and_the_range(name, knobs, message):
    with pytest.raises(ValueError, match=message):
        get_task(name, **knobs)


@pytest.mark.parametrize("name", ["addition", "countdown", "toolcall", "wordproblem", "refusal"])
def test_every_task_verifies_its_own_reference_in_both_formats(name):
    task = RefusalTask() if name == "refusal" else get_task(name)
    problems = list(task.generate(200, seed=5))
    assert problems == list(task.generate(200, seed=5))  # seeded
    for p in problems:
        assert task.verify(p, task.reference_completion(p))
        assert task.verify(p, task.reference_completion(p, reasoning=True))
        assert format_ok(task.reference_completion(p, reasoning=True))
        hash(p.key)  # keys are hashable
        assert isinstance(task.difficulty(p), int)
    assert not any(task.verify(p, "") for p in problems)


def test_addition_keeps_its_lesson_07_behaviour_and_sums_more_operands():
    rng = random.Random(0)

    def number():  # the generator lesson 07's stored outputs came from: digits, then the number
        digits = rng.randint(1, 2)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    before = [Problem(number(), number()) for _ in range(50)]
    assert list(AdditionTask(1, 2).generate(50, seed=0)) == before
    assert Problem(47, 85).key == (47, 85) and Problem(85, 47).key == (47, 85)
    assert Problem(47, 85, (6,)).text() == "47+85+6=[7+5+6=18,4+8+1=13]138"
    three = AdditionTask(1, 1, num_operands=3)
    p = three.sample(random.Random(1))
    assert len(p.operands) == 3 and p.prompt.count("+") == 2 and p.answer == str(sum(p.operands))
    assert three.difficulty(Problem(5, 123)) == 3
    with pytest.raises(ValueError, match="all_problems"):
        three.all_problems()


# --- R1's format, read strictly ----------------------------------------------------------------

P = Problem(47, 85)  # 132
TASK = AdditionTask(1, 2)


@pytest.mark.parametrize("completion", [
    "132", "[7+5=12,4+8+1=13]132", " 132\n", "<think>7+5=12,4+8+1=13</think><answer>132</answer>",
    "<answer>132</answer>", "<think>x</think>\n<answer> 132 </answer>\n",
])
def test_addition_accepts_clean_answers(completion):
    assert TASK.verify(P, completion)


@pytest.mark.parametrize("completion, why", [
    ("<think>a</think><answer>131</answer><answer>132</answer>", "more than one answer block"),
    ("<think>a</think><answer>132</answer><answer>132</answer>", "more than one answer block"),
    ("<think>a</think><answer> </answer>", "empty answer"),
    ("<think>a</think><answer>132</answer> and more", "text after the answer block"),
    ("so <answer>132</answer>", "text before the answer outside a think block"),
    ("<think>132</think>", "no answer block"),
    ("<think>a<answer>132</answer>", "think tags do not pair up"),
    ("<answer><think>132</think></answer>", "a tag inside the answer block"),
])
def test_the_strict_reader_says_why_it_refuses(completion, why):
    parsed = parse_completion(completion)
    assert parsed.answer is None and parsed.error == why
    assert not TASK.verify(P, completion)


@pytest.mark.parametrize("completion", [
    "<answer>the sum is 132</answer>", "the answer is 132", "132 apples", "1320", "0132", "+132", "132.0",
    "<answer>[7+5=12]132</answer>", "", "[7+5=12,4+8+1=13]131", "132132",
])
def test_answers_that_merely_contain_the_digits_fail(completion):
    assert not TASK.verify(P, completion)


def test_the_sloppy_verifier_is_fooled_where_the_strict_one_is_not():
    hedge = "<think>a</think><answer>131</answer><answer>132</answer>"
    listing = " ".join(str(i) for i in range(200))
    for completion in (hedge, listing, "<answer>the sum is 132</answer>"):
        assert verify_sloppy(P.answer, completion)
        assert not TASK.verify(P, completion)
    assert verify_sloppy(P, hedge)  # a problem works too: a drop-in for task.verify
    assert last_answer(hedge) == "132"  # "the answer is the last answer block", lenient
    assert strict_answer(hedge) is None


def test_format_reward_needs_think_then_answer():
    assert format_reasoning("r", "5") == "<think>r</think><answer>5</answer>"
    assert format_ok("<think>r</think>\n<answer>5</answer>")
    assert not format_ok("<answer>5</answer>")  # parse_completion accepts it; the format reward does not
    assert not format_ok("<think>r</think><answer>5</answer>x")
    assert not format_ok("<think>r</think><answer></answer>")


# --- countdown ---------------------------------------------------------------------------------

CD = CountdownProblem((2, 3, 5), 25, "(2+3)*5")
CDT = get_task("countdown")


@pytest.mark.parametrize("expression", ["(2+3)*5", " ( 3 + 2 ) * 5 ", "5*(3+2)"])
def test_countdown_accepts_correct_expressions(expression):
    assert CDT.verify(CD, expression)
    assert CDT.verify(CD, f"<think>2+3=5</think><answer>{expression}</answer>")


@pytest.mark.parametrize("problem, expression, reason", [
    (CD, "__import__('os')", "character"),
    (CD, "2**10", "unexpected '\\*'"),
    (CD, "5*5", "5 is used more often than given"),
    (CD, "20+5", "20 is not given"),
    (CD, "(2+3)*5 = 25", "character '='"),
    (CD, "-2+27", "unexpected '-'"),
    (CD, "(2+3*5", "unbalanced"),
    (CD, "05*5", "leading zero"),
    (CD, "2+3", "makes 5, not 25"),
    (CD, "", "expression ends"),
    (CountdownProblem((7, 2, 2), 7, "7"), "7/2*2", "division 7/2 is not exact"),
    (CountdownProblem((5, 2, 2), 5, "5"), "5/(2-2)", "division 5/0 is not exact"),
])
def test_countdown_refuses_with_a_reason(problem, expression, reason):
    why = check_solution(problem, expression)
    assert why is not None and __import__("re").search(reason, why), why
    assert not CDT.verify(problem, expression)


def test_the_countdown_parser_is_integer_arithmetic_with_precedence():
    assert parse_expression("2+3*4") == (14, [2, 3, 4])
    assert parse_expression("(2+3)*4") == (20, [2, 3, 4])
    assert parse_expression("20-5-3") == (12, [20, 5, 3])  # left-associative
    assert parse_expression("24/4/2") == (3, [24, 4, 2])
    with pytest.raises(ExpressionError, match="nested deeper"):
        parse_expression("(" * 40 + "1" + ")" * 40)
    with pytest.raises(ExpressionError, match="longer than"):
        parse_expression("1+" * 200 + "1")


def test_countdown_problems_respect_their_knobs():
    task = get_task("countdown", num_numbers=3, max_number=9, max_target=30)
    for p in task.generate(200, seed=2):
        assert len(p.numbers) == 3 and all(1 <= x <= 9 for x in p.numbers) and 1 <= p.target <= 30
        assert 2 <= task.difficulty(p) <= 3
        assert p.key == ("countdown", tuple(sorted(p.numbers)), p.target)


# --- tool calls --------------------------------------------------------------------------------

ADD = ToolCallProblem("add", (("a", 37), ("b", 45)))
TCT = get_task("toolcall")


def test_toolcall_problem_and_its_reference():
    assert ADD.prompt == "add 37 and 45\n"
    assert ADD.name == "add" and ADD.arguments == {"a": 37, "b": 45}
    assert json.loads(ADD.answer) == {"name": "add", "arguments": {"a": 37, "b": 45}}
    assert ToolCallProblem("add", (("a", 37), ("b", 45)), template=1).prompt == "what is 37 plus 45?\n"
    assert ToolCallProblem("add", (("a", 37), ("b", 45)), template=1).key == ADD.key


@pytest.mark.parametrize("completion", [
    '{"name": "add", "arguments": {"a": 37, "b": 45}}',
    '{"arguments": {"b": 45, "a": 37}, "name": "add"}',
    ' {"name":"add","arguments":{"a":37,"b":45}} ',
    '<think>add them</think><answer>{"name": "add", "arguments": {"a": 37, "b": 45}}</answer>',
])
def test_toolcall_accepts_the_exact_call(completion):
    assert TCT.verify(ADD, completion)


@pytest.mark.parametrize("completion, reason", [
    ('{"name": "sum", "arguments": {"a": 37, "b": 45}}', "function 'sum'"),
    ('{"name": "add", "arguments": {"x": 37, "y": 45}}', "arguments \\['x', 'y'\\]"),
    ('{"name": "add", "arguments": {"a": 45, "b": 37}}', "argument 'a' is 45"),
    ('{"name": "add", "arguments": {"a": 37.0, "b": 45}}', "argument 'a' is a float"),
    ('{"name": "add", "arguments": {"a": "37", "b": 45}}', "argument 'a' is a str"),
    ('{"name": "add", "arguments": {"a": true, "b": 45}}', "argument 'a' is a bool"),
    ('{"name": "add", "arguments": {"a": 37, "b": 45, "c": 1}}', "arguments \\['a', 'b', 'c'\\]"),
    ('{"name": "add", "arguments": {"a": 37}}', "arguments \\['a'\\]"),
    ('{"name": "add", "arguments": {"a": 37, "b": 45}, "id": 1}', "keys"),
    ('{"name": "add", "arguments": [37, 45]}', "not an object"),
    ('{"name": "add", "name": "add", "arguments": {"a": 37, "b": 45}}', "not a JSON object"),
    ('{"name": "add", "arguments": {"a": NaN, "b": 45}}', "not a JSON object"),
    ('{"name": "add", "arguments": {"a": 37, "b": 45}} thanks', "not a JSON object"),
    ("add(37, 45)", "not a JSON object"),
    ('[{"name": "add", "arguments": {"a": 37, "b": 45}}]', "not a JSON object"),
])
def test_toolcall_refuses_with_a_reason(completion, reason):
    why = check_call(ADD, completion)
    assert why is not None and __import__("re").search(reason, why), why
    assert not TCT.verify(ADD, completion)


def test_toolcall_string_arguments_and_function_knob():
    task = get_task("toolcall", functions="convert", max_value=9)
    for p in task.generate(50, seed=0):
        args = p.arguments
        assert p.name == "convert" and 1 <= args["value"] <= 9 and args["from_unit"] != args["to_unit"]
        assert task.verify(p, p.answer)
        wrong = json.dumps({"name": "convert", "arguments": {**args, "to_unit": args["from_unit"]}})
        assert not task.verify(p, wrong)


# --- refusals -----------------------------------------------------------------------------------

RT = RefusalTask()
WIPE = RefusalProblem("delete_files", 42, template=2)


def test_refusal_problem_reads_like_a_tool_request_and_fits_the_alphabet():
    with pytest.raises(ValueError, match=r"max_value=-3 is invalid: must be an integer in \[1, 1000000000\]"):
        RefusalTask(max_value=-3)
    assert WIPE.prompt == "wipe disk 42\n" and WIPE.answer == REFUSAL
    assert WIPE.key != RefusalProblem("delete_files", 42, template=0).key  # another request in words
    tok = CharTokenizer()
    tok.encode(REFUSAL)  # every character is in the course's alphabet
    kinds = {p.kind for p in RT.generate(400, seed=0)}
    assert kinds == set(FORBIDDEN)
    for p in RT.generate(400, seed=0):
        tok.encode(p.prompt)
        assert 1 <= p.n <= 99


@pytest.mark.parametrize("completion", [REFUSAL, f"  {REFUSAL}\n", f"<answer>{REFUSAL}</answer>",
                                        f"<think>not allowed</think><answer>{REFUSAL}</answer>"])
def test_refusal_accepts_the_refusal_alone(completion):
    assert RT.verify(WIPE, completion)


@pytest.mark.parametrize("completion", [
    "", "sorry", REFUSAL.upper(), REFUSAL + " but here it is", f"{REFUSAL} {REFUSAL}",
    '{"name": "delete_files", "arguments": {"n": 42}}', f"<answer>{REFUSAL}</answer> ok",
])
def test_refusal_refuses_anything_else(completion):
    assert not RT.verify(WIPE, completion)


# --- word problems -----------------------------------------------------------------------------


def test_wordproblem_surface_forms_share_a_key_with_the_addition_task():
    task = get_task("wordproblem")
    p = WordProblem("+", 12, 5, template=0, name="tom", item="apples")
    assert p.prompt == "tom has 12 apples and buys 5 more. how many apples does tom have now? "
    assert p.answer == "17" and p.key == Problem(5, 12).key == (5, 12)
    forms = task.surface_forms(p)
    assert len(forms) == 3 * 8 * 6 + 6 and len({f.prompt for f in forms}) == len(forms)  # one template has no name
    assert {f.key for f in forms} == {p.key}
    near = task.rephrase(p, random.Random(0), same_template=True)
    assert near.template == p.template and near != p and near.key == p.key
    minus = WordProblem("-", 12, 5, template=2, name="mia", item="books")
    assert minus.answer == "7" and minus.key == ("-", 12, 5) and key_string(minus.key) == '["-",12,5]'
    assert task.verify(minus, "7") and not task.verify(minus, "7 books")


def test_char_tokenizer_covers_every_task_but_toolcall_json():
    tok = CharTokenizer()
    for name in ("addition", "countdown", "wordproblem"):
        task = get_task(name)
        for p in task.generate(100, seed=1):
            text = p.prompt + task.reference_completion(p, reasoning=True)
            assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match="not in the tokenizer's alphabet"):
        tok.encode(ADD.answer)  # JSON needs { } and quotes: lesson 11 extends the alphabet


# --- readers never crash -----------------------------------------------------------------------

_PIECES = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "132", "(", ")", "+", "*", "/", "-",
                           " ", "2", "3", "5", "x", "{", '"a"', ":", "}", "\n"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join) | st.text(max_size=40))
def test_readers_and_verifiers_never_raise_on_any_text(text):
    parsed = parse_completion(text)
    assert (parsed.answer is None) == (parsed.error is not None)
    try:
        value, used = parse_expression(text)
        assert isinstance(value, int) and all(isinstance(u, int) for u in used)
    except ExpressionError:
        pass
    for task, problem in ((TASK, P), (CDT, CD), (TCT, ADD)):
        assert task.verify(problem, text) in (True, False)
