import pytest
import torch

from mlakit import ModelConfig
from mlakit.generate import GenerateOutput, generate, sample_next, speculative_generate
from mlakit.losses import token_logprobs
from mlakit.model import MiniDeepSeek

CFG = ModelConfig.from_preset("nano", n_routed_experts=0, num_hidden_layers=2)


@pytest.fixture(scope="module", params=["mla", "gqa"])
def model(request):
    torch.manual_seed(0)
    cfg = CFG if request.param == "mla" else CFG.variant("gqa", 2)
    return MiniDeepSeek(cfg).eval()


def test_left_padded_batch_equals_each_prompt_alone(model):
    p1, p2 = torch.randint(3, 100, (1, 7)), torch.randint(3, 100, (1, 4))
    batch = torch.zeros(2, 7, dtype=torch.long)
    batch[0], batch[1, 3:] = p1, p2
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0
    out = generate(model, batch, 12, attention_mask=mask)
    assert torch.equal(out[0], generate(model, p1, 12)[0])
    assert torch.equal(out[1, 3:], generate(model, p2, 12)[0])
    assert torch.equal(out, generate(model, batch, 12, attention_mask=mask, use_cache=False))


def test_generation_stops_at_eos_and_pads_finished_rows(model):
    prompt = torch.randint(3, 100, (3, 5))
    free = generate(model, prompt, 10)
    eos = int(free[0, 6])  # the second generated token of row 0 becomes "eos"
    out = generate(model, prompt, 10, eos_id=eos, pad_id=0)
    row0 = out[0, 5:].tolist()
    assert eos in row0 and all(t == 0 for t in row0[row0.index(eos) + 1:])
    assert out.shape[1] <= 15


class RecordingStreamer:
    def __init__(self):
        self.calls = []

    def put(self, tokens):
        self.calls.append(tokens.clone())

    def end(self):
        self.calls.append("end")


def test_streamer_gets_the_prompt_then_each_token_then_end(model):
    prompt = torch.randint(3, 100, (2, 5))
    streamer = RecordingStreamer()
    out = generate(model, prompt, 4, streamer=streamer)
    assert torch.equal(streamer.calls[0], prompt) and streamer.calls[-1] == "end"
    assert torch.equal(torch.stack(streamer.calls[1:-1], dim=1), out[:, 5:])  # (B,) per step, in order


def test_streamer_is_compatible_with_transformers_text_streamer(model, capsys):
    transformers = pytest.importorskip("transformers")

    class CharTokenizer:  # the two methods TextStreamer uses
        def decode(self, ids, **kwargs):
            return "".join(chr(97 + int(i) % 26) for i in ids)

    out = generate(model, torch.randint(3, 100, (1, 3)), 5, streamer=transformers.TextStreamer(CharTokenizer()))
    assert capsys.readouterr().out.strip() == CharTokenizer().decode(out[0])


def test_sampling_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert picks == {0, 1}
    probs = logits.softmax(-1)[0]
    # top_p just above p(0) keeps tokens 0 and 1 only
    picks = {int(sample_next(logits, 1.0, top_p=float(probs[0]) + 0.01, generator=g)) for _ in range(200)}
    assert picks == {0, 1}
    picks = {int(sample_next(logits, 1.0, top_p=float(probs[0]) - 0.01, generator=g)) for _ in range(50)}
    assert picks == {0}
    assert int(sample_next(logits, 0.0)) == 0


@pytest.mark.parametrize("kwargs, field", [({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"),
                                           ({"top_p": 1.5}, "top_p")])
def test_bad_sampling_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        sample_next(torch.zeros(1, 4), **{"temperature": 1.0, **kwargs})


def test_seeded_sampling_reproduces(model):
    ids = torch.zeros(2, 1, dtype=torch.long)
    a = generate(model, ids, 8, temperature=0.8, top_p=0.9, generator=torch.Generator().manual_seed(1))
    b = generate(model, ids, 8, temperature=0.8, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def _left_padded_batch():
    torch.manual_seed(5)
    batch = torch.randint(3, 100, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    batch[1, :3], mask[1, :3] = 0, 0
    batch[2, :1], mask[2, :1] = 0, 0
    return batch, mask


def _teacher_forced_logprobs(model, out, attention_mask, temperature):
    """log-probs of the generated tokens, recomputed in one forward over prompt + completion."""
    T, n = attention_mask.shape[1], out.completion_mask.shape[1]
    full_mask = torch.cat([attention_mask, torch.ones_like(out.completion_mask, dtype=attention_mask.dtype)], dim=1)
    with torch.no_grad():
        logits = model(out.sequences, attention_mask=full_mask).logits[:, T - 1: T - 1 + n]  # predicts each new token
    return token_logprobs(logits, out.sequences[:, T:], out.completion_mask, temperature)


@pytest.mark.parametrize("sampling", [dict(temperature=0.7), dict(temperature=1.3, top_k=20, top_p=0.9),
                                      dict(temperature=0.0)], ids=["temperature", "top-k-top-p", "greedy"])
def test_stored_logprobs_equal_a_teacher_forced_recomputation(model, sampling):
    batch, mask = _left_padded_batch()
    def run(**kwargs):
        return generate(model, batch, 10, attention_mask=mask, generator=torch.Generator().manual_seed(0),
                        num_return_sequences=2, **sampling, **kwargs)

    eos = int(run()[0, 9])  # row 0 ends by its third new token, the others run on or stop where it appears
    out = run(eos_id=eos, return_dict=True)
    assert not bool(out.completion_mask[0, 3:].any())
    assert isinstance(out, GenerateOutput) and out.logprobs.dtype == torch.float32
    n = out.completion_mask.shape[1]
    assert out.sequences.shape == (6, 7 + n) and out.logprobs.shape == out.completion_mask.shape == (6, n)
    # temperature-scaled log-probs (greedy: the raw logits at temperature 1), top-k / top-p not renormalised
    want = _teacher_forced_logprobs(model, out, mask.repeat_interleave(2, 0), sampling["temperature"] or 1.0)
    torch.testing.assert_close(out.logprobs, want, atol=1e-5, rtol=0)
    assert bool((out.logprobs[out.completion_mask] <= 0).all()) and bool((out.logprobs[~out.completion_mask] == 0).all())


def test_completion_mask_covers_the_tokens_up_to_and_including_eos(model):
    prompt = torch.randint(3, 100, (2, 5), generator=torch.Generator().manual_seed(2))
    free = generate(model, prompt, 8)
    eos = int(free[0, 7])  # row 0's third new token
    out = generate(model, prompt, 8, eos_id=eos, pad_id=0, return_dict=True)
    new = out.sequences[:, 5:]
    for row in range(2):
        tokens = new[row].tolist()
        end = tokens.index(eos) + 1 if eos in tokens else len(tokens)
        assert out.completion_mask[row].tolist() == [True] * end + [False] * (len(tokens) - end)
        assert all(t == 0 for t in tokens[end:])
    assert torch.equal(out.sequences, generate(model, prompt, 8, eos_id=eos, pad_id=0))  # same ids as the default return


@pytest.mark.parametrize("sampling", [dict(temperature=0.9, top_p=0.95), dict(temperature=0.0)])
def test_num_return_sequences_equals_the_prompts_repeated_prompt_major(model, sampling):
    batch, mask = _left_padded_batch()
    G = 3
    grouped = generate(model, batch, 9, attention_mask=mask, num_return_sequences=G, return_dict=True,
                       generator=torch.Generator().manual_seed(4), **sampling)
    repeated = generate(model, batch.repeat_interleave(G, 0), 9, attention_mask=mask.repeat_interleave(G, 0),
                        return_dict=True, generator=torch.Generator().manual_seed(4), **sampling)
    assert torch.equal(grouped.sequences, repeated.sequences)  # row i * G + j is sample j of prompt i
    assert torch.equal(grouped.sequences[:, :7], batch.repeat_interleave(G, 0))
    torch.testing.assert_close(grouped.logprobs, repeated.logprobs, atol=1e-5, rtol=0)
    if sampling["temperature"]:
        assert not torch.equal(grouped.sequences[0], grouped.sequences[1])  # the samples of one prompt differ
    uncached = generate(model, batch, 9, attention_mask=mask, num_return_sequences=G, use_cache=False,
                        generator=torch.Generator().manual_seed(4), **sampling)
    assert torch.equal(uncached, grouped.sequences)


def test_a_group_is_sampled_from_one_prefill(model):
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    try:
        generate(model, torch.randint(3, 100, (2, 6)), 5, temperature=1.0, num_return_sequences=4,
                 generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert calls == [(2, 6)] + [(8, 1)] * 4  # the prompts once, then one token per row and step


def test_no_new_tokens_returns_the_repeated_prompts(model):
    prompt = torch.randint(3, 100, (2, 4))
    assert torch.equal(generate(model, prompt, 0, num_return_sequences=2), prompt.repeat_interleave(2, 0))
    out = generate(model, prompt, 0, num_return_sequences=2, return_dict=True)
    assert out.completion_mask.shape == out.logprobs.shape == (4, 0)


def test_generation_refuses_positions_past_the_model_limit(model):
    limit = model.config.max_position_embeddings
    prompt = torch.zeros(1, limit - 3, dtype=torch.long)
    assert generate(model, prompt, 3).shape == (1, limit)  # exactly full is fine
    with pytest.raises(ValueError, match=f"needs {limit + 1} positions, more than the model's "
                                         f"max_position_embeddings={limit}"):
        generate(model, prompt, 4)
    with pytest.raises(ValueError, match="num_return_sequences=0"):
        generate(model, prompt, 1, num_return_sequences=0)


# ---------------------------------------------------------------- speculative decoding
MTP_CFG = CFG.replace(num_nextn_predict_layers=1)


def _mtp_model(seed=0):
    torch.manual_seed(seed)
    return MiniDeepSeek(MTP_CFG).eval()


def test_speculative_decoding_equals_greedy_with_rejected_drafts():
    model = _mtp_model()
    prompt = torch.randint(3, 100, (1, 6), generator=torch.Generator().manual_seed(1))
    plain = generate(model, prompt, 16)
    fast, stats = speculative_generate(model, prompt, 16)
    assert torch.equal(fast, plain)
    assert stats.drafted == stats.main_forwards - 1 and stats.accepted < stats.drafted  # random weights: few accepted
    for k in (2, 5, 9):  # stop at an eos the free run produces, wherever it falls in a step
        eos = int(plain[0, 6 + k])
        fast, _ = speculative_generate(model, prompt, 16, eos_id=eos)
        assert torch.equal(fast, generate(model, prompt, 16, eos_id=eos))


def test_speculative_decoding_with_drafts_always_accepted():
    model = _mtp_model()
    with torch.no_grad():  # every logit 0: main model and drafter both pick token 0, so every draft is right
        model.norm.weight.zero_()
        model.mtp[0].shared_head_norm.weight.zero_()
    prompt = torch.randint(3, 100, (1, 5))
    plain = generate(model, prompt, 11)
    fast, stats = speculative_generate(model, prompt, 11)
    assert torch.equal(fast, plain) and stats.accepted == stats.drafted == 5 and stats.main_forwards == 6
    assert stats.tokens_per_forward == pytest.approx(11 / 6)
    fast, stats = speculative_generate(model, prompt, 11, eos_id=0)  # the first new token is eos
    assert torch.equal(fast, generate(model, prompt, 11, eos_id=0)) and fast.shape[1] == 6 and stats.drafted == 0


@pytest.mark.parametrize("always_accept", [False, True])
def test_speculative_streamer_gets_every_decided_token_once(always_accept):
    model = _mtp_model()
    if always_accept:
        with torch.no_grad():
            model.norm.weight.zero_()
            model.mtp[0].shared_head_norm.weight.zero_()
    prompt = torch.randint(3, 100, (1, 5), generator=torch.Generator().manual_seed(3))
    for new in (1, 8, 9):
        streamer = RecordingStreamer()
        out, stats = speculative_generate(model, prompt, new, streamer=streamer)
        assert torch.equal(streamer.calls[0], prompt) and streamer.calls[-1] == "end"
        steps = streamer.calls[1:-1]
        assert len(steps) == stats.main_forwards and all(1 <= len(t) <= 2 for t in steps)
        assert torch.equal(torch.cat(steps), out[0, 5:]) and out.shape[1] == 5 + new


def test_speculative_verify_is_one_forward_of_two_tokens():
    model = _mtp_model()
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    shapes = []
    original = model.hidden_states
    model.hidden_states = lambda ids, *a, **k: shapes.append(tuple(ids.shape)) or original(ids, *a, **k)
    try:
        _, stats = speculative_generate(model, torch.randint(3, 100, (1, 6)), 8)
    finally:
        hook.remove()
        del model.hidden_states
    assert calls == []  # no full forwards with their own LM head over every position
    assert shapes == [(1, 6)] + [(1, 2)] * stats.drafted and len(shapes) == stats.main_forwards


def test_speculative_decoding_refuses_positions_past_the_model_limit():
    model = _mtp_model()
    limit = MTP_CFG.max_position_embeddings
    with pytest.raises(ValueError, match="max_position_embeddings"):
        speculative_generate(model, torch.zeros(1, limit - 2, dtype=torch.long), 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generation_and_speculative_decoding_stay_on_the_model_device():
    model = _mtp_model().cuda()
    prompt = torch.randint(3, 100, (2, 5), device="cuda")
    mask = torch.ones_like(prompt)
    out = generate(model, prompt, 6, attention_mask=mask, temperature=1.0, num_return_sequences=2, return_dict=True,
                   generator=torch.Generator("cuda").manual_seed(0))
    assert out.sequences.device.type == out.logprobs.device.type == out.completion_mask.device.type == "cuda"
    fast, _ = speculative_generate(model, prompt[:1], 8)
    assert fast.device.type == "cuda" and torch.equal(fast, generate(model, prompt[:1], 8))


def test_what_generate_returns_can_be_trained_on():
    """generate runs in inference mode, but its outputs are ordinary tensors: a training forward may use them,
    and a no-grad forward after it may reuse the MoE workspace (made in inference mode) without error."""
    torch.manual_seed(0)
    model = MiniDeepSeek(ModelConfig.from_preset("nano", num_hidden_layers=2))  # with routed experts
    ids = torch.randint(1, 40, (2, 5))
    out = generate(model, ids, 4, temperature=1.0, num_return_sequences=2, return_dict=True,
                   generator=torch.Generator().manual_seed(0))
    plain = generate(model, ids, 3)
    assert not any(t.is_inference() for t in (out.sequences, out.completion_mask, out.logprobs, plain))
    logits = model(out.sequences).logits  # embedding saves the ids for its backward
    (token_logprobs(logits[:, 4:-1], out.sequences[:, 5:]) - out.logprobs).sum().backward()
    with torch.no_grad():
        model(out.sequences[:1, :2])  # a small sorted MoE forward without grad reuses the workspace: it must be
        # an ordinary tensor again


def test_rotary_memo_gives_the_same_rotation():
    from mlakit.layers import RotaryEmbedding

    rope = RotaryEmbedding(16)
    positions = torch.arange(3, 9)
    x, y = torch.randn(2, 4, 6, 16), torch.randn(2, 6, 16)
    first, second = rope(x, positions), rope(y, positions)  # the second call reuses the cos / sin
    assert torch.equal(second, RotaryEmbedding(16)(y, positions))
    assert torch.equal(first, RotaryEmbedding(16)(x, positions))
    assert torch.equal(rope(y, torch.arange(0, 6)), RotaryEmbedding(16)(y, torch.arange(0, 6)))  # new positions
