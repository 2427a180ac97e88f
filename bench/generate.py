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

A second table measures speculative decoding with the MTP module as drafter
(``mlakit.generate.speculative_generate``) beside plain greedy decoding
(``generate``, absorbed decode), ``small`` preset at 1024 context by default,
batch 1, the same tokens from both on every run. Its speed depends on how often
the draft is accepted, so it is measured on two models and the acceptance is
printed beside the ratio:

- random init: the draft is almost never right, the floor (every step pays
  for a two-token verify and the MTP block and yields one token);
- trained: the same model after a short pretraining (``--train-steps`` AdamW
  steps, seconds on a CPU, the time printed) on a synthetic "permutation
  language": each token is a fixed permutation of the one before, or with
  probability 0.1 a uniformly random token. The token after next is then
  predictable, as in the regular text where V3 reports 85-90% acceptance; a
  greedy continuation never takes the random branch, so the trained drafter is
  accepted at nearly every step: this row is the best case.

"break-even acceptance" is the acceptance at which speculation would match
plain decoding, from the measured time of one speculative step (a two-token
verify plus the MTP block) over that of one plain step: below it speculation
loses, above it it wins. Target (issue 10): speculative at least 1.0x plain
with the trained drafter, goal 1.3x.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch
from benchutil import machine

from mlakit import ModelConfig, hf, seed_everything
from mlakit.generate import generate, speculative_generate
from mlakit.kvcache import format_table
from mlakit.model import MiniDeepSeek
from mlakit.train import TrainConfig, Trainer

PRESETS, CONTEXTS, NEW, ROUNDS, TARGET_CONTEXT, TARGET = ("nano", "small"), (256, 1024, 2048, 4096), 32, 3, 4096, 3.0
SPEC_PRESETS, SPEC_CONTEXTS, SPEC_MINIMUM, SPEC_GOAL = ("small",), (1024,), 1.0, 1.3
TRAIN_STEPS, TRAIN_BATCH, TRAIN_LEN = 60, 8, 128  # enough for the MTP module to learn the language (loss near its floor)
LANGUAGE_NOISE = 0.1  # probability that the next token of the permutation language is random instead of perm[previous]


class TokenTimer:
    """A streamer (``put`` / ``end``, as transformers' generate calls it) that timestamps each new token
    (speculative decoding puts one or two tokens per call: ``counts`` says how many)."""

    def __init__(self):
        self.times: list[float] = []
        self.counts: list[int] = []
        self.prompt_seen = False

    def put(self, tokens):
        if self.prompt_seen:
            self.times.append(time.perf_counter())
            self.counts.append(tokens.numel())
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


def permutation_language(vocab_size: int, n: int, length: int, seed: int) -> torch.Tensor:
    """(n, length) token ids: each token is perm[previous], or with probability LANGUAGE_NOISE a random one."""
    perm = torch.randperm(vocab_size, generator=torch.Generator().manual_seed(1))  # the language: one fixed permutation
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, length, dtype=torch.long)
    x[:, 0] = torch.randint(vocab_size, (n,), generator=g)
    jump = torch.rand(n, length, generator=g) < LANGUAGE_NOISE
    noise = torch.randint(vocab_size, (n, length), generator=g)
    for i in range(1, length):
        x[:, i] = torch.where(jump[:, i], noise[:, i], perm[x[:, i - 1]])
    return x


def drafter_models(preset: str, max_context: int, steps: int):
    """The preset at random init, and the same init after ``steps`` of pretraining on the permutation language."""
    cfg = ModelConfig.from_preset(preset, max_position_embeddings=max(max_context,
                                  ModelConfig.from_preset(preset).max_position_embeddings))
    seed_everything(0)
    random_init = MiniDeepSeek(cfg).eval()
    seed_everything(0)
    model = MiniDeepSeek(cfg)

    def batch(step):
        x = permutation_language(cfg.vocab_size, TRAIN_BATCH, TRAIN_LEN + 1, seed=1000 + step)
        return {"input_ids": x[:, :-1], "targets": x[:, 1:]}

    start = time.perf_counter()
    history = Trainer(model, TrainConfig(steps=steps, lr=3e-3, warmup_steps=10, eval_every=0), batch).train(
        desc=f"training {preset} on the permutation language")
    trained = {"seconds": time.perf_counter() - start, **{k: v for k, v in history[-1].items() if k.startswith("loss")}}
    return cfg, random_init, model.eval(), trained


@torch.no_grad()
def measure_speculative(model, prompt, new: int, rounds: int) -> dict:
    """Best decode tokens/s of plain greedy and speculative decoding (interleaved rounds, same tokens checked)."""
    best = {"plain": 0.0, "speculative": 0.0}
    prefill = {"plain": float("inf"), "speculative": float("inf")}
    stats = None
    for round_ in range(rounds + 1):  # round 0 warms up
        timers = {name: TokenTimer() for name in best}
        start = {"plain": time.perf_counter()}
        plain = generate(model, prompt, new, streamer=timers["plain"])
        start["speculative"] = time.perf_counter()
        fast, stats = speculative_generate(model, prompt, new, streamer=timers["speculative"])
        if not torch.equal(plain, fast):
            raise SystemExit("speculative decoding generated different tokens than greedy decoding")
        if round_:
            for name, t in timers.items():  # the tokens after the first, over the time after the first
                best[name] = max(best[name], (sum(t.counts) - t.counts[0]) / (t.times[-1] - t.times[0]))
                prefill[name] = min(prefill[name], t.times[0] - start[name])
    steps_per_s = best["speculative"] * stats.drafted / max(1, stats.accepted + stats.drafted)  # verify steps / s
    return {**best, "prefill": prefill, "stats": stats, "break_even": best["plain"] / steps_per_s - 1}


def speculative_table(args) -> list[tuple[str, float, float]]:
    """Print one table per preset; return (preset, acceptance, ratio) of the trained drafter at each context."""
    verdicts = []
    for preset in args.spec_presets:
        cfg, random_init, trained, info = drafter_models(preset, max(args.spec_contexts), args.train_steps)
        rows = []
        for context in args.spec_contexts:
            prompt = permutation_language(cfg.vocab_size, 1, context - args.new, seed=context)
            for label, model in (("random init", random_init), (f"trained {args.train_steps} steps", trained)):
                r = measure_speculative(model, prompt, args.new, args.rounds)
                ratio = r["speculative"] / r["plain"]
                rows.append({"context": context, "weights": label, "acceptance": f"{r['stats'].acceptance_rate:.0%}",
                             "tokens/forward": f"{r['stats'].tokens_per_forward:.2f}",
                             "plain tok/s": r["plain"], "speculative tok/s": r["speculative"],
                             "speculative/plain": f"{ratio:.2f}x", "break-even acceptance": f"{r['break_even']:.0%}",
                             "prefill s (plain, speculative)": f"{r['prefill']['plain']:.2f}, "
                                                               f"{r['prefill']['speculative']:.2f}"})
                if model is trained:
                    verdicts.append((preset, context, r["stats"].acceptance_rate, ratio))
        losses = ", ".join(f"{k} {v:.2f}" for k, v in info.items() if k != "seconds")
        print(f"\nspeculative decoding, {preset}: {random_init.num_parameters(include_mtp=True):,} parameters with "
              f"the MTP module; trained {args.train_steps} steps ({TRAIN_BATCH} x {TRAIN_LEN} tokens) in "
              f"{info['seconds']:.0f} s, final {losses}; same tokens as greedy on every run")
        print(format_table(rows, ".0f"))
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--contexts", type=int, nargs="+", default=CONTEXTS)
    parser.add_argument("--new", type=int, default=NEW, help="tokens generated per run")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--tables", nargs="+", choices=("peers", "speculative"), default=("peers", "speculative"),
                        help="which tables: mlakit vs transformers, speculative vs plain decoding")
    parser.add_argument("--spec-presets", nargs="+", default=SPEC_PRESETS)
    parser.add_argument("--spec-contexts", type=int, nargs="+", default=SPEC_CONTEXTS)
    parser.add_argument("--train-steps", type=int, default=TRAIN_STEPS, help="pretraining steps of the drafter model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # transformers' generation notices
    print(f"Greedy generation, batch 1, fp32, {args.new} new tokens per run; {machine()}; best of {args.rounds} rounds "
          "after a warm-up; decode tokens/s exclude the prefill")
    verdicts = []
    for preset in args.presets if "peers" in args.tables else ():
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
    for preset, context, acceptance, ratio in speculative_table(args) if "speculative" in args.tables else ():
        verdict = "goal met" if ratio >= SPEC_GOAL else "minimum met" if ratio >= SPEC_MINIMUM else "NOT met"
        print(f"speculative decoding, {preset} at context {context}: {ratio:.2f}x plain decoding at "
              f"{acceptance:.0%} acceptance (minimum {SPEC_MINIMUM:.1f}x, goal {SPEC_GOAL:.1f}x): {verdict}")


if __name__ == "__main__":
    main()
