"""The SFT template: the layout by hand, R1's format read back, the prompt masked out of the loss."""

import pytest
import torch

from mlakit import ModelConfig
from mlakit.data import (
    AdditionTask,
    LMBatches,
    Record,
    encode_example,
    encode_records,
    format_ok,
    parse_completion,
    render,
    to_text,
)
from mlakit.losses import lm_loss, pretrain_loss
from mlakit.model import MiniDeepSeek
from mlakit.tokenizer import CharTokenizer

TOK = CharTokenizer()
TINY = ModelConfig.from_preset("nano", vocab_size=TOK.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                               qk_rope_head_dim=8, v_head_dim=8, intermediate_size=64, moe_intermediate_size=16,
                               max_position_embeddings=48)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_render_plain_and_reasoning_in_r1s_format():
    assert render("1+2=", "3") == ("1+2=", "3")
    prompt, completion = render("1+2=", "3", reasoning="1+2=3")
    assert (prompt, completion) == ("1+2=", "<think>1+2=3</think><answer>3</answer>")
    parsed = parse_completion(completion)  # the strict reader of the verifiers reads it back
    assert parsed.ok and parsed.answer == "3" and parsed.think == "1+2=3" and format_ok(completion)
    assert render("1+2=", "3", reasoning="")[1] == "<think></think><answer>3</answer>"
    with pytest.raises(ValueError, match="non-empty answer"):
        render("1+2=", " ")


def test_encode_example_by_hand():
    ids, prompt_len = encode_example(TOK, "1+2=", "3")
    c = TOK.token_id
    assert ids == [TOK.bos_id, c("1"), c("+"), c("2"), c("="), c("3"), TOK.eos_id]
    assert prompt_len == 5  # <bos> and the four prompt characters
    # each tag is one token: <think> 1 </think> <answer> 1 </answer> <eos>
    ids, prompt_len = encode_example(TOK, *render("0+1=", "1", reasoning="1"))
    assert ids[prompt_len:] == [c("<think>"), c("1"), c("</think>"), c("<answer>"), c("1"), c("</answer>"),
                                TOK.eos_id]
    assert ids == TOK.encode(to_text(*render("0+1=", "1", reasoning="1")))
    assert to_text("1+2=", "3") == "<bos>1+2=3<eos>"


def test_batches_of_sft_examples_mask_the_prompt_and_the_padding():
    examples = [encode_example(TOK, "1+2=", "3"), encode_example(TOK, "12+3=", "<think>x</think><answer>15</answer>")]
    batch = LMBatches(examples, batch_size=2, pad_id=TOK.pad_id).collate(examples)
    # row 0: <bos> 1 + 2 = 3 <eos>, prompt_len 5; targets [1, +, 2, =, 3, <eos>, pad ...]:
    # only "3" (index 4) and <eos> (index 5) count
    width = batch["targets"].shape[1]
    assert width == 13  # row 1 is the longer: 14 tokens, 13 targets
    assert batch["loss_mask"][0].tolist() == [0, 0, 0, 0, 1, 1] + [0] * 7
    # row 1: <bos> 1 2 + 3 = (prompt_len 6), then <think> x </think> <answer> 1 5 </answer> <eos>: targets 5..12
    assert batch["loss_mask"][1].tolist() == [0] * 5 + [1] * 8
    assert batch["targets"][1, 5].item() == TOK.token_id("<think>") and batch["targets"][1, 12].item() == TOK.eos_id


def test_prompt_positions_get_exactly_zero_gradient():
    examples = [encode_example(TOK, "47+85=", "<think>7+5=12</think><answer>132</answer>")]
    batch = LMBatches(examples, 1, TOK.pad_id).collate(examples)
    T = batch["targets"].shape[1]
    logits = torch.randn(1, T, TOK.vocab_size, requires_grad=True)  # (1, T, vocab)
    lm_loss(logits, batch["targets"], batch["loss_mask"]).backward()
    prompt_targets = examples[0][1] - 1  # targets before the first completion token
    assert prompt_targets == 6
    assert torch.count_nonzero(logits.grad[0, :prompt_targets]) == 0  # exactly zero, not small
    assert (logits.grad[0, prompt_targets:].abs().sum(-1) > 0).all()


def test_prompt_targets_do_not_change_the_model_loss():
    torch.manual_seed(0)
    model = MiniDeepSeek(TINY)
    task = AdditionTask(1, 2)
    problems = list(task.generate(4, seed=0))
    examples = [encode_example(TOK, p.prompt, task.reference_completion(p, reasoning=True)) for p in problems]
    batch = LMBatches(examples, 4, TOK.pad_id).collate(examples)
    scrambled = dict(batch, targets=batch["targets"].clone())
    prompt_part = batch["loss_mask"] == 0
    scrambled["targets"][prompt_part] = torch.randint(0, TOK.vocab_size, (int(prompt_part.sum()),))
    assert not torch.equal(scrambled["targets"], batch["targets"])
    a, b = pretrain_loss(model, batch), pretrain_loss(model, scrambled)  # main + MTP + balance, all masked
    assert set(a.parts) == {"main", "mtp", "balance"}
    assert all(torch.equal(a.parts[k], b.parts[k]) for k in a.parts)


def test_encode_records_names_the_bad_record():
    good = Record("r0", "addition", "1+2=", "3", "3")
    assert encode_records([good], TOK) == [encode_example(TOK, "1+2=", "3")]
    for blank in ("", "  \n"):
        with pytest.raises(ValueError, match=r"record 'r1' \(#1\) has no completion"):
            encode_records([good, Record("r1", "addition", "1+2=", blank, "3")], TOK)
    with pytest.raises(ValueError, match=r"record 'long' \(#0\) is 12 tokens long .*context of 10 positions"):
        encode_records([Record("long", "addition", "1+2=", "333333", "3")], TOK, max_len=10)
    assert len(encode_records([Record("fits", "addition", "1+2=", "33333", "3")], TOK, max_len=11)) == 1
    with pytest.raises(ValueError, match=r"record 'caps' \(#0\): character 'X'"):
        encode_records([Record("caps", "addition", "1+2=", "X", "3")], TOK)
