import pytest
import torch

from mlakit.data import AdditionTask, Problem, extract_answer, make_splits
from mlakit.tokenizer import SPECIAL_TOKENS, CharTokenizer


def test_round_trip_and_special_tokens_are_single_ids():
    tok = CharTokenizer()
    text = "<think>12+3</think><answer>15</answer>"
    ids = tok.encode(text, bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "<bos>" + text + "<eos>"
    assert tok.decode(ids, skip_special=True) == "12+315"
    for special in SPECIAL_TOKENS:
        assert tok.encode(special) == [tok.token_id(special)]
    assert tok.encode("<") == [tok.token_id("<")] if "<" in tok.alphabet else True


def test_unknown_characters_are_named():
    with pytest.raises(ValueError, match=r"character 'H' at position 0"):
        CharTokenizer().encode("Hi")
    with pytest.raises(ValueError, match="not a token"):
        CharTokenizer().token_id("<nope>")


def test_save_and_load(tmp_path):
    tok = CharTokenizer("0123456789+=")
    tok.save(tmp_path / "tok.json")
    back = CharTokenizer.load(tmp_path / "tok.json")
    assert back.itos == tok.itos and back.encode("12+3=") == tok.encode("12+3=")


def test_left_padded_batches():
    tok = CharTokenizer()
    ids, mask = tok.encode_batch(["1+1=", "12+13="])
    assert ids.shape == mask.shape == (2, 7)
    assert ids[0, :2].tolist() == [tok.pad_id] * 2 and mask[0].tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert tok.decode(ids[1], skip_special=True) == "12+13="
    right, _ = tok.encode_batch(["1", "123"], bos=False, pad_left=False)
    assert right[0].tolist() == [tok.token_id("1"), tok.pad_id, tok.pad_id]


def test_worked_steps_carry_like_a_person():
    assert Problem(47, 85).text() == "47+85=[7+5=12,4+8+1=13]132"
    assert Problem(5, 3).text(with_steps=False) == "5+3=8"
    assert Problem(999, 1).completion() == "[9+1=10,9+1=10,9+1=10]1000"


@pytest.mark.parametrize("completion, answer", [
    ("[7+5=12,4+8+1=13]132", "132"), ("132", "132"), ("<think>x</think><answer>77</answer>", "77"),
    ("[7+5=12", None), ("", None), ("[1+1=2]2<eos>", "2"),
])
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


def test_verifier_accepts_right_and_rejects_wrong_answers():
    task = AdditionTask(1, 3)
    for p in task.generate(200, seed=1):
        assert task.verify(p, p.completion())
        assert task.verify(p, p.completion(with_steps=False))
        assert not task.verify(p, str(p.a + p.b + 1))
        assert not task.verify(p, "")


def test_generation_is_seeded_and_respects_digits():
    task = AdditionTask(2, 3)
    a = list(task.generate(50, seed=3))
    assert a == list(task.generate(50, seed=3)) and a != list(task.generate(50, seed=4))
    assert all(10 <= x < 1000 for p in a for x in (p.a, p.b))
    with pytest.raises(ValueError, match="min_digits"):
        AdditionTask(3, 2)


def test_no_problem_appears_in_two_splits():
    problems = AdditionTask(1, 2).all_problems() + list(AdditionTask(1, 2).generate(500, seed=9))
    splits = make_splits(problems, seed=0)
    keys = {name: {p.key for p in ps} for name, ps in splits.items()}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    assert sum(len(v) for v in splits.values()) == len(problems)
    assert 0.75 < len(keys["train"]) / len({p.key for p in problems}) < 0.85
    mirrored = {(p.b, p.a) for p in splits["test"]}
    assert not mirrored & {(p.a, p.b) for p in splits["train"]}  # b+a never leaks into training


def test_bad_split_fractions():
    with pytest.raises(ValueError, match="fractions"):
        make_splits([Problem(1, 2)], (0.5, 0.5, 0.5))


def test_tokenizer_covers_the_task_text():
    tok = CharTokenizer()
    for p in AdditionTask(1, 3).generate(100):
        assert tok.decode(tok.encode(p.text())) == p.text()
    assert isinstance(tok.encode_batch(["1"])[0], torch.Tensor)
