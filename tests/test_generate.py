import pytest
import torch

from mlakit import ModelConfig
from mlakit.generate import generate, sample_next
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
