"""Greedy generation speed: mlakit (absorbed decode) vs mlakit (naive) vs transformers' DeepseekV3ForCausalLM.

    python bench/generate.py                      (or: make bench)
    python bench/generate.py --presets small --contexts 1024 4096 --new 16

Config: the course's ``nano`` preset (4 layers, hidden 128, 4 heads,
kv_lora_rank 32, 8 routed experts) and the slightly larger ``small`` preset
(hidden 256, 8 heads, kv_lora_rank 64, 16 routed experts), both with
max_position_embeddings 4096, randomly initialised with a fixed seed, batch 1,
fp32. For each context length L the prompt has L - NEW tokens and NEW tokens
are generated greedily, so the last step attends over L positions. Peers:

- mlakit absorbed: ``mlakit.generate.generate`` with the latent cache; prefill
                   on the naive path, every decode step on the absorbed path
                   (the default ``mode="auto"``);
- mlakit naive:    the same with ``model.set_attention_mode("naive")``: every
                   decode step re-expands the cached latents;
- transformers:    ``DeepseekV3ForCausalLM.from_pretrained`` on the folder
                   ``mlakit.hf.save_pretrained`` wrote for the same model
                   (transformers' default attention and experts), its own
                   ``generate`` with its cache, greedy.

All three must produce the same tokens (checked on every run). A streamer
timestamps every token as it is produced, so one call gives both the prefill
time (up to the first new token) and the decode rate (the NEW - 1 tokens after
it); each is the best over rounds in which the peers take turns. Target
(issue): mlakit at least 3x transformers at 4096 context on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch
from benchutil import machine

from mlakit import ModelConfig, hf, seed_everything
from mlakit.generate import generate
from mlakit.kvcache import format_table
from mlakit.model import MiniDeepSeek

PRESETS, CONTEXTS, NEW, ROUNDS, TARGET_CONTEXT, TARGET = ("nano", "small"), (256, 1024, 2048, 4096), 32, 3, 4096, 3.0


class TokenTimer:
    """A streamer (``put`` / ``end``, as transformers' generate calls it) that timestamps each new token."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, tokens):
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True  # the first call carries the prompt

    def end(self):
        pass


def load_peers(preset: str, max_context: int):
    import transformers

    cfg = ModelConfig.from_preset(preset, max_position_embeddings=max_context)
    seed_everything(0)
    model = MiniDeepSeek(cfg).eval()
    folder = tempfile.mkdtemp(prefix="mlakit-bench-")
    hf.save_pretrained(model, folder)
    theirs = transformers.DeepseekV3ForCausalLM.from_pretrained(folder).eval()
    theirs.generation_config.eos_token_id = None  # generate exactly the requested number of tokens
    theirs.generation_config.pad_token_id = 0
    return cfg, model, theirs


def runners(model, theirs):
    def ours(mode):
        def run(prompt, new, streamer):
            model.set_attention_mode(mode)
            return generate(model, prompt, new, streamer=streamer)
        return run

    def transformers_run(prompt, new, streamer):
        return theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                               min_new_tokens=new, do_sample=False, streamer=streamer)

    return {"mlakit absorbed": ours("auto"), "mlakit naive": ours("naive"), "transformers": transformers_run}


@torch.no_grad()
def measure(peers, prompt, new: int, rounds: int, context: int) -> dict[str, tuple[float, float]]:
    """{peer: (best prefill seconds, best decode tokens/s)}; every run's tokens checked against the first peer's."""
    prefill = {name: [] for name in peers}
    decode = {name: [] for name in peers}
    reference = None
    for _ in range(rounds + 1):  # the first round warms up and is not timed
        for name, run in peers.items():
            timer = TokenTimer()
            start = time.perf_counter()
            out = run(prompt, new, timer)
            if reference is None:
                reference = out
            elif not torch.equal(out, reference):
                raise SystemExit(f"{name} generated different tokens than {next(iter(peers))} at context {context}")
            prefill[name].append(timer.times[0] - start)
            decode[name].append((new - 1) / (timer.times[-1] - timer.times[0]))
    return {name: (min(prefill[name][1:]), max(decode[name][1:])) for name in peers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--contexts", type=int, nargs="+", default=CONTEXTS)
    parser.add_argument("--new", type=int, default=NEW, help="tokens generated per run")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # transformers' generation notices
    print(f"Greedy generation, batch 1, fp32, {args.new} new tokens per run; {machine()}; best of {args.rounds} rounds "
          "after a warm-up; decode tokens/s exclude the prefill")
    verdicts = []
    for preset in args.presets:
        cfg, model, theirs = load_peers(preset, max(args.contexts))
        peers = runners(model, theirs)
        rows = []
        for context in args.contexts:
            prompt = torch.randint(3, cfg.vocab_size, (1, context - args.new),
                                   generator=torch.Generator().manual_seed(context))
            r = measure(peers, prompt, args.new, args.rounds, context)
            rate = {name: r[name][1] for name in peers}
            rows.append({"context": context, **{f"{n} tok/s": rate[n] for n in peers},
                         "absorbed/naive": f"{rate['mlakit absorbed'] / rate['mlakit naive']:.1f}x",
                         "absorbed/transformers": f"{rate['mlakit absorbed'] / rate['transformers']:.1f}x",
                         "prefill s (ours, transformers)": f"{r['mlakit absorbed'][0]:.2f}, {r['transformers'][0]:.2f}"})
            if context == TARGET_CONTEXT:
                verdicts.append((preset, rate["mlakit absorbed"] / rate["transformers"]))
        model.set_attention_mode("auto")
        print(f"\n{preset}: {model.num_parameters():,} parameters; transformers attention "
              f"{theirs.config._attn_implementation!r}; same tokens from all three on every run")
        print(format_table(rows, ".0f"))
    for preset, ratio in verdicts:
        print(f"target at context {TARGET_CONTEXT}, {preset}: mlakit decodes {ratio:.1f}x as fast as transformers "
              f"(target {TARGET:.0f}x): {'met' if ratio >= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
