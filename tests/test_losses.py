"""Losses as functions: hand-computed values, masks, and the same numbers the model's old in-forward loss gave."""

import math

import pytest
import torch

from mlakit import ModelConfig
from mlakit.losses import balance_loss, lm_loss, mtp_loss, pretrain_loss, token_logprobs
from mlakit.model import MiniDeepSeek
from mlakit.moe import sequence_balance_loss


def test_token_logprobs_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # (1, 2, 2)
    targets = torch.tensor([[1, 0]])
    lp = token_logprobs(logits, targets)
    # softmax([0, 0])[1] = 1/2; softmax([ln 3, 0])[0] = 3/4
    torch.testing.assert_close(lp, torch.tensor([[math.log(0.5), math.log(0.75)]]))
    # at temperature 2 the second row is softmax([ln 3 / 2, 0]) = sqrt(3) / (sqrt(3) + 1)
    lp2 = token_logprobs(logits, targets, temperature=2.0)
    torch.testing.assert_close(lp2[0, 1], torch.tensor(math.log(math.sqrt(3) / (math.sqrt(3) + 1))))
    masked = token_logprobs(logits, targets, mask=torch.tensor([[True, False]]))
    assert masked[0, 1] == 0 and masked[0, 0] == lp[0, 0]
    with pytest.raises(ValueError, match="temperature=0"):
        token_logprobs(logits, targets, temperature=0)


def test_token_logprobs_equals_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    targets = torch.randint(0, 11, (3, 5), generator=g)
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(token_logprobs(logits, targets, temperature=0.7), ref)
    assert token_logprobs(logits.bfloat16(), targets).dtype == torch.float32


def test_lm_loss_counts_only_masked_positions():
    logits = torch.zeros(1, 3, 4)  # uniform: every position costs ln 4
    logits[0, 2, 0] = 100.0  # the last position is sure of token 0 and wrong about it
    targets = torch.tensor([[1, 2, 3]])
    mask = torch.tensor([[1, 1, 0]])
    assert lm_loss(logits, targets, mask).item() == pytest.approx(math.log(4))
    assert lm_loss(logits, targets).item() == pytest.approx((2 * math.log(4) + 100) / 3, rel=1e-5)


def test_mtp_loss_shifts_targets_and_mask_by_depth():
    targets = torch.tensor([[1, 2, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    depth1 = torch.zeros(1, 3, 4)  # predicts targets[:, 1:] = [2, 3, 0] under mask [1, 1, 0]
    depth1[0, 0, 2] = depth1[0, 1, 3] = 50.0  # both counted positions right: loss ~ 0
    depth1[0, 2, 1] = 50.0  # wrong, but masked
    assert mtp_loss([depth1], targets, mask, weight=0.3).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 2, 4)  # depth 2, uniform: ln 4 on each counted position
    got = mtp_loss([depth1, uniform], targets, mask, weight=0.3).item()
    assert got == pytest.approx(0.3 * (0 + math.log(4)) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="at least one depth"):
        mtp_loss([], targets)


def test_pretrain_loss_equals_its_parts_from_the_model_output():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("nano", num_hidden_layers=2, aux_loss_alpha=0.01)
    model = MiniDeepSeek(cfg)
    ids = torch.randint(0, cfg.vocab_size, (3, 9))
    targets = torch.roll(ids, -1, dims=1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, :2] = False
    result = pretrain_loss(model, {"input_ids": ids, "targets": targets, "loss_mask": mask})
    out = result.output
    torch.testing.assert_close(result.parts["main"], lm_loss(out.logits, targets, mask))
    torch.testing.assert_close(result.parts["mtp"], mtp_loss(out.mtp_logits, targets, mask, cfg.mtp_loss_weight))
    # balance: each layer's sequences are as long as its input (the MTP block sees T - 1 tokens)
    lengths = [9] * (len(out.routing) - 1) + [8]
    by_hand = sum(sequence_balance_loss(r.scores, r.indices, 0.01, t) for r, t in zip(out.routing, lengths, strict=True))
    torch.testing.assert_close(result.parts["balance"], by_hand)
    torch.testing.assert_close(balance_loss(out.routing, 0.01, batch_size=3), by_hand)
    result.loss.backward()  # the balance loss reaches the routers
    assert all(layer.mlp.gate.weight.grad.abs().sum() > 0 for layer in model.layers[cfg.first_k_dense_replace:])
