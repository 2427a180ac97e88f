"""GRPOTrainer: rollouts, grouping, the shared Trainer's machinery, exact resume, and the errors it raises."""

import csv
import json

import pytest
import torch

from mlakit import ModelConfig
from mlakit.data import AdditionTask, Problem
from mlakit.model import MiniDeepSeek
from mlakit.moe import iter_moe_layers
from mlakit.recipes import grpo, task_problems
from mlakit.rl import GRPOConfig, GRPOTrainer, accuracy_reward, completion_logprobs, format_reward
from mlakit.tokenizer import CharTokenizer
from mlakit.utils import seed_everything, set_progress

TOK = CharTokenizer()
TINY = ModelConfig.from_preset("nano", vocab_size=TOK.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                               qk_rope_head_dim=8, v_head_dim=8, intermediate_size=64, moe_intermediate_size=16,
                               max_position_embeddings=48)
PROMPTS = [f"{i}+{j}=" for i in range(10) for j in range(10)]
DIGITS = set("0123456789")
SMALL = dict(num_generations=4, prompts_per_step=2, max_completion_length=6, max_steps=4)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_bars():
    set_progress(False)
    yield
    set_progress(None)


def digits(prompts, completions, **kwargs):
    """Share of the completion's characters that are digits: a reward a random model can climb."""
    return [sum(ch in DIGITS for ch in c) / max(1, len(c)) for c in completions]


def constant(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def _model(seed=0, config=TINY):
    seed_everything(seed)
    return MiniDeepSeek(config)


def test_rollout_logprobs_equal_a_teacher_forced_recomputation():
    model = _model()
    trainer = GRPOTrainer(model, TOK, digits, ["1+2=", "34+56=", "7+8="], GRPOConfig(
        num_generations=4, prompts_per_step=3, max_completion_length=8, temperature=0.7))
    torch.manual_seed(1)
    r = trainer.rollout([0, 1, 2])
    model.eval()
    with torch.no_grad():
        again, _, _ = completion_logprobs(model, r.sequences, r.attention_mask, r.prompt_len, 0.7)
    # the cached, absorbed decode at sampling time and one full (naive) forward give the same numbers
    torch.testing.assert_close(again.masked_fill(~r.completion_mask, 0.0), r.logprobs, atol=1e-5, rtol=0)
    assert r.completion_mask.any()


def test_groups_are_formed_per_prompt():
    seen = {}

    def by_prompt(prompts, completions, answer=None, **kwargs):
        seen["prompts"], seen["answer"] = prompts, answer
        return [1.0 if p == "3+4=" else 0.0 for p in prompts]  # constant within each prompt's group

    problems = [Problem(1, 2), Problem(5, 6), Problem(3, 4)]
    trainer = GRPOTrainer(_model(), TOK, by_prompt, problems, GRPOConfig(**{**SMALL, "prompts_per_step": 3}))
    r = trainer.rollout([2, 0, 1])
    G = 4
    assert r.prompts == [problems[i].prompt for i in (2, 0, 1) for _ in range(G)]  # prompt-major
    for row in range(3 * G):  # the prompt columns of row i * G + j are prompt i's tokens
        ids = TOK.encode(r.prompts[row], bos=True)
        assert r.sequences[row, r.prompt_len - len(ids): r.prompt_len].tolist() == ids
    record = trainer.train_step()
    assert seen["answer"] == [problems[i].answer for i in trainer.prompt_indices(0) for _ in range(G)]
    # each group is constant (1 for 3+4=, 0 for the others): no group has a spread, whatever the batch has
    assert record["frac_reward_zero_std"] == 1.0 and record["loss"] == 0.0


def test_mean_reward_rises_on_a_trivial_task():
    cfg = GRPOConfig(num_generations=8, prompts_per_step=4, max_completion_length=8, learning_rate=3e-3,
                     max_steps=25)
    trainer = GRPOTrainer(_model(), TOK, digits, PROMPTS, cfg)
    history = trainer.train()
    first = sum(r["reward"] for r in history[:5]) / 5
    last = sum(r["reward"] for r in history[-5:]) / 5
    assert last > first + 0.1, (first, last)
    r = history[-1]
    for key in ("reward", "reward_std", "reward_digits", "reward_digits_std", "frac_reward_zero_std",
                "completion_length", "truncated_ratio", "entropy", "clip_ratio", "clip_ratio_low",
                "clip_ratio_high", "lr", "loss", "grad_norm", "max_vio"):
        assert key in r, key
    assert len(r["expert_load"]) == 1  # one MoE layer; the MTP block is not run by GRPO


def test_equal_rewards_and_beta_zero_leave_the_parameters_where_they_are():
    model = _model()
    before = {k: v.clone() for k, v in model.named_parameters()}
    trainer = GRPOTrainer(model, TOK, constant, PROMPTS, GRPOConfig(**SMALL, learning_rate=1e-2, num_iterations=2))
    history = trainer.train(steps=2)
    assert all(r["loss"] == 0.0 and r["grad_norm"] == 0.0 for r in history)
    for k, v in model.named_parameters():
        assert torch.equal(v, before[k]), k


def test_beta_uses_a_frozen_reference_and_logs_k3():
    model = _model()
    trainer = GRPOTrainer(model, TOK, digits, PROMPTS, GRPOConfig(**SMALL, beta=0.04, learning_rate=1e-2))
    ref_before = {k: v.clone() for k, v in trainer.ref_model.state_dict().items()}
    history = trainer.train()
    assert history[0]["kl"] < 1e-6 < 1e-4 < history[-1]["kl"]  # step 0 is the reference; then it moves away
    assert all(torch.equal(v, ref_before[k]) for k, v in trainer.ref_model.state_dict().items())
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    assert GRPOTrainer(model, TOK, digits, PROMPTS, GRPOConfig(**SMALL)).ref_model is None  # beta = 0: none


def test_dynamic_sampling_and_masked_truncation():
    trainer = GRPOTrainer(_model(), TOK, constant, PROMPTS, GRPOConfig(**SMALL, dynamic_sampling=True))
    record = trainer.train_step()
    assert record["groups_kept"] == 0 and record["loss"] == 0.0  # every group equal: nothing to train on
    # a completion budget of 1 never reaches eos, so masking truncated completions leaves nothing to learn
    model = _model()
    before = {k: v.clone() for k, v in model.named_parameters()}
    trainer = GRPOTrainer(model, TOK, digits, PROMPTS, GRPOConfig(
        **{**SMALL, "max_completion_length": 1}, mask_truncated_completions=True, learning_rate=1e-2))
    record = trainer.train_step()
    assert record["truncated_ratio"] == 1.0
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())


def test_the_moe_bias_moves_with_the_routing():
    model = _model()
    bias = [m.gate.e_score_correction_bias.clone() for m in iter_moe_layers(model)]
    GRPOTrainer(model, TOK, digits, PROMPTS, GRPOConfig(**SMALL)).train(steps=1)
    assert any(not torch.equal(b, m.gate.e_score_correction_bias) for b, m in zip(bias, iter_moe_layers(model), strict=True))


def test_checkpoint_and_exact_resume(tmp_path):
    cfg = GRPOConfig(**SMALL, learning_rate=1e-2, num_iterations=2)
    whole = GRPOTrainer(_model(), TOK, digits, PROMPTS, cfg)
    whole.train()
    first = GRPOTrainer(_model(), TOK, digits, PROMPTS, cfg)
    first.train(steps=2)
    folder = first.save(tmp_path / "ckpt")
    torch.manual_seed(123)  # whatever ran in between
    second = GRPOTrainer(_model(), TOK, digits, PROMPTS, cfg).load(folder)
    second.train()
    assert [r["reward"] for r in second.history] == [r["reward"] for r in whole.history]
    assert [r["loss"] for r in second.history] == [r["loss"] for r in whole.history]
    for (k, v), w in zip(second.model.state_dict().items(), whole.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    meta = json.loads((folder / "trainer.json").read_text())
    assert meta["grpo_config"]["num_iterations"] == 2 and meta["step"] == 2
    second.write_csv(tmp_path / "metrics.csv")
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == 4 and "reward_digits" in rows[0] and "expert_load" not in rows[0]


def test_held_out_evaluation_lands_in_the_step_record():
    calls = []

    def eval_fn(model):
        calls.append(1)
        return {"held_out_accuracy": 0.25}

    trainer = GRPOTrainer(_model(), TOK, digits, PROMPTS, GRPOConfig(**SMALL, eval_steps=2), eval_fn=eval_fn)
    history = trainer.train()
    assert [("held_out_accuracy" in r) for r in history] == [False, True, False, True]
    assert [e["step"] for e in trainer.evals] == [2, 4]


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match="3 prompts, but a step needs prompts_per_step=4"):
        GRPOTrainer(_model(), TOK, digits, PROMPTS[:3], GRPOConfig(prompts_per_step=4))
    long_prompt = "1+" * 20 + "1="
    with pytest.raises(ValueError, match=r"prompt 2 \('1\+1\+1.*has 43 tokens with bos.*context of 48 minus "
                                         r"max_completion_length=6 leaves \(42\)"):
        GRPOTrainer(_model(), TOK, digits, ["1+1=", "2+2=", long_prompt], GRPOConfig(**SMALL))
    with pytest.raises(ValueError, match="prompt 1 .*not in the tokenizer's alphabet"):
        GRPOTrainer(_model(), TOK, digits, ["1+1=", "ÿ"], GRPOConfig(**SMALL))
    with pytest.raises(ValueError, match=r"reward_weights has 1 weights for 2 reward functions \(digits, format\)"):
        GRPOTrainer(_model(), TOK, [digits, format_reward], PROMPTS, GRPOConfig(**SMALL, reward_weights=[1.0]))

    def wrong(prompts, completions, **kwargs):
        return [0.0]

    trainer = GRPOTrainer(_model(), TOK, wrong, PROMPTS, GRPOConfig(**SMALL))
    with pytest.raises(ValueError, match="reward function 'wrong' returned 1 values for 8 completions"):
        trainer.train_step()


def test_recipe_on_a_task_with_held_out_problems():
    task = AdditionTask(1, 2)
    train, held_out = task_problems(task, 30, 5, seed=0)
    assert not {p.key for p in train} & {p.key for p in held_out}
    assert len(train) == 30 and len(held_out) == 5
    run = grpo(_model(), "addition", GRPOConfig(**SMALL), tokenizer=TOK, num_prompts=30, num_eval=5, steps=2)
    assert [e["step"] for e in run.trainer.evals] == [0, 2]  # before training, and at the end
    assert set(run.trainer.reward_names) == {"accuracy", "format"}
    assert "completion_length_correct" in run.history[0] and "held_out_accuracy" in run.history[-1]
    assert accuracy_reward(task).__name__ == "accuracy"
