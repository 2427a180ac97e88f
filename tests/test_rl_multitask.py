"""Several skills in one GRPO run: mixed prompts, rewards routed by task, evaluation of every skill."""

import pytest

from mlakit import ModelConfig
from mlakit.data import AdditionTask, Problem
from mlakit.data.toolcall import ToolCallProblem, ToolCallTask
from mlakit.model import MiniDeepSeek
from mlakit.rl import (
    GRPOConfig,
    GRPOTrainer,
    accuracy_reward,
    combine_evals,
    mixed_prompts,
    per_task_reward,
    skills_eval,
)
from mlakit.tokenizer import CharTokenizer
from mlakit.utils import seed_everything, set_progress

ADD = AdditionTask(1, 2)
TOOLS = ToolCallTask(max_value=9, functions=("add",))
P_ADD = Problem(47, 85)  # 47+85=132
P_TOOL = ToolCallProblem("add", (("a", 3), ("b", 4)))  # {"name": "add", "arguments": {"a": 3, "b": 4}}


def test_mixed_prompts_carry_task_problem_and_answer_and_are_shuffled_reproducibly():
    rows = mixed_prompts({"arithmetic": [P_ADD, Problem(1, 2)], "toolcall": [P_TOOL]}, seed=0)
    assert len(rows) == 3
    assert sorted(r["task"] for r in rows) == ["arithmetic", "arithmetic", "toolcall"]
    tool = next(r for r in rows if r["task"] == "toolcall")
    assert tool == {"prompt": "add 3 and 4\n", "problem": P_TOOL, "task": "toolcall", "answer": P_TOOL.answer}
    assert rows == mixed_prompts({"arithmetic": [P_ADD, Problem(1, 2)], "toolcall": [P_TOOL]}, seed=0)
    with pytest.raises(ValueError, match="at least one task"):
        mixed_prompts({})
    with pytest.raises(ValueError, match="no problems"):
        mixed_prompts({"arithmetic": []})


def test_per_task_reward_routes_each_completion_to_its_tasks_verifier():
    reward = per_task_reward({"arithmetic": accuracy_reward(ADD), "toolcall": accuracy_reward(TOOLS)})
    assert reward.__name__ == "accuracy"
    completions = ["132", P_TOOL.answer, "131", '{"name": "add", "arguments": {"a": 3, "b": 5}}', "132"]
    tasks = ["arithmetic", "toolcall", "arithmetic", "toolcall", "toolcall"]  # the last: a sum where a call is due
    problems = [P_ADD, P_TOOL, P_ADD, P_TOOL, P_TOOL]
    got = reward(prompts=["p"] * 5, completions=completions, problem=problems, task=tasks)
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_per_task_reward_slices_every_field_and_calls_each_task_once():
    calls = []

    def spy(prompts, completions, problem, answer, **kwargs):
        calls.append((list(completions), list(problem), list(answer)))
        return [float(len(c)) for c in completions]

    reward = per_task_reward({"a": spy, "b": spy}, name="length")
    got = reward(prompts=["p0", "p1", "p2"], completions=["x", "yy", "zzz"], problem=[0, 1, 2],
                 answer=["A0", "A1", "A2"], task=["a", "b", "a"])
    assert got == [1.0, 2.0, 3.0]
    assert calls == [(["x", "zzz"], [0, 2], ["A0", "A2"]), (["yy"], [1], ["A1"])]
    assert reward.__name__ == "length"


def test_per_task_reward_default_and_errors():
    only_add = per_task_reward({"arithmetic": accuracy_reward(ADD)}, default=0.5)
    got = only_add(prompts=["p", "q"], completions=["132", "x"], problem=[P_ADD, P_TOOL], task=["arithmetic", "toolcall"])
    assert got == [1.0, 0.5]
    strict = per_task_reward({"arithmetic": accuracy_reward(ADD)})
    with pytest.raises(ValueError, match="no reward for task 'toolcall'"):
        strict(prompts=["p"], completions=["x"], problem=[P_TOOL], task=["toolcall"])
    with pytest.raises(ValueError, match="'task' field"):
        strict(prompts=["p"], completions=["x"], problem=[P_ADD])
    with pytest.raises(ValueError, match="mapping of task name"):
        per_task_reward({})


def test_combine_evals_merges_and_refuses_a_clash():
    both = combine_evals(lambda m: {"a": 1.0}, lambda m: {"b": 2.0})
    assert both(None) == {"a": 1.0, "b": 2.0}
    with pytest.raises(ValueError, match="two eval_fns report 'a'"):
        combine_evals(lambda m: {"a": 1.0}, lambda m: {"a": 2.0})(None)
    with pytest.raises(ValueError, match="needs both problems and a verifier"):
        skills_eval(CharTokenizer(), {"x": [P_ADD]}, {"y": ADD.verify})


@pytest.mark.usefixtures("one_thread")
def test_trainer_with_mixed_prompts_logs_every_skill_without_a_fork():
    set_progress(False)
    try:
        tok = CharTokenizer(CharTokenizer().alphabet + '{}"_')
        cfg = ModelConfig.from_preset("nano", vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                                      qk_rope_head_dim=8, v_head_dim=8, intermediate_size=64,
                                      moe_intermediate_size=16, max_position_embeddings=48)
        seed_everything(0)
        model = MiniDeepSeek(cfg)
        adds = [Problem(i, j) for i in range(5) for j in range(5)]
        calls = list(TOOLS.generate(20, seed=0))
        prompts = mixed_prompts({"arithmetic": adds, "toolcall": calls})
        reward = per_task_reward({"arithmetic": accuracy_reward(ADD), "toolcall": accuracy_reward(TOOLS)})
        evaluate = skills_eval(tok, {"arithmetic": adds[:4], "toolcall": calls[:4]},
                               {"arithmetic": ADD.verify, "toolcall": TOOLS.verify}, max_new_tokens={"arithmetic": 4,
                                                                                                  "toolcall": 8})
        config = GRPOConfig(num_generations=2, prompts_per_step=4, max_completion_length=6, max_steps=2,
                            eval_steps=1)
        trainer = GRPOTrainer(model, tok, reward, prompts, config, eval_fn=evaluate)
        history = trainer.train()
        assert [r["step"] for r in history] == [0, 1]
        for record in history:  # a random model gets nothing right: the numbers are there, and 0
            assert record["acc_arithmetic"] == 0.0 and record["acc_toolcall"] == 0.0
            assert record["reward_accuracy"] == 0.0
    finally:
        set_progress(None)
