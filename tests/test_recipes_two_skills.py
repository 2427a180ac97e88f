"""Lesson 11's base recipe: two skills (three with refusals), disjoint splits, the mixed SFT set."""

import collections

import pytest
import torch

from mlakit.data import REFUSAL
from mlakit.recipes.two_skills import (
    NEW_TOKENS,
    base_records,
    evaluate_skills,
    skill_problems,
    skill_tokenizer,
    train_base,
)


@pytest.fixture(scope="module")
def three():
    return skill_problems(num_held_out=50, num_tool_train=300, num_refusal_train=120)


def test_splits_share_no_problem_and_refusals_leave_the_two_skills_alone(three):
    two = skill_problems(num_held_out=50, num_tool_train=300)
    assert list(two.tasks) == ["arithmetic", "toolcall"] and list(three.tasks) == ["arithmetic", "toolcall", "refusal"]
    for skill in two.tasks:
        assert two.train[skill] == three.train[skill] and two.held_out[skill] == three.held_out[skill]
    for skill in three.tasks:
        train, held = {p.key for p in three.train[skill]}, {p.key for p in three.held_out[skill]}
        assert len(three.held_out[skill]) == 50 and not train & held, skill  # (a sum and its swap share a key)
    assert set(NEW_TOKENS) == set(three.tasks)  # a greedy budget for each skill
    assert len(three.train["toolcall"]) == 300 and len(three.train["refusal"]) == 120
    with pytest.raises(ValueError, match=r"num_refusal_train=900 is invalid: the refusal task has 891 distinct"):
        skill_problems(num_refusal_train=900)


def test_base_records_mix_every_problem_once_in_both_formats(three):
    records = base_records(three, tagged_share=0.5, seed=0)
    counts = collections.Counter(r.task for r in records)
    assert counts == {skill: len(problems) for skill, problems in three.train.items()}
    sums = [r for r in records if r.task == "arithmetic"]
    tagged = sum("<think>" in r.completion for r in sums) / len(sums)
    assert 0.45 < tagged < 0.55
    assert all(r.completion == REFUSAL for r in records if r.task == "refusal")
    assert all("<think>" not in r.completion for r in records if r.task != "arithmetic")
    assert [r.task for r in records[:50]] != sorted(r.task for r in records[:50])  # shuffled
    assert records == base_records(three, tagged_share=0.5, seed=0)
    tok = skill_tokenizer()
    for r in records:  # every character of every example is in the tokenizer
        tok.encode(r.prompt + r.completion)


def test_train_base_runs_and_each_skill_is_evaluated(three):
    torch.manual_seed(0)
    run = train_base(three, skill_tokenizer(), steps=2, warmup_steps=1, batch_size=4)
    small = skill_problems(num_held_out=3, num_tool_train=10, num_refusal_train=10)
    acc = evaluate_skills(run.model.eval(), skill_tokenizer(), small)
    assert set(acc) == {"acc_arithmetic", "acc_toolcall", "acc_refusal"}
    assert all(0.0 <= v <= 1.0 for v in acc.values())
