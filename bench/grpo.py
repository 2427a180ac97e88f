"""Time per GRPO step, mlakit's GRPOTrainer against TRL's, on one model, prompts, G and rewards (CPU).

    python bench/grpo.py                       # nano, 8 steps, G = 8, 4 prompts per step
    python bench/grpo.py --steps 20 --ckpt runs/nano --threads 2

Both sides start from the same weights: mlakit's model is exported with
``save_pretrained`` and loaded as transformers' ``DeepseekV3ForCausalLM`` (default
attention and experts implementations, what a TRL user gets), with a
character-level ``PreTrainedTokenizerFast`` that gives exactly CharTokenizer's
ids (checked on every prompt). Same prompts (the additions' prompts), G,
max_completion_length, temperature, loss_type, beta 0, learning rate (constant),
AdamW betas, gradient clipping and reward functions (accuracy by the task's
strict verifier, plus a digit-share shaping reward a random model can climb).
The MoE bias update is off on mlakit's side for parity (TRL does not do it).

A step is what each library does between two optimizer steps: rollouts
(mlakit: one prefill, the latent cache copied G times, absorbed MLA decode;
TRL: transformers' ``generate``), rewards, advantages, one forward and backward,
AdamW. Times are the median over steps after the first (warm-up), in one
process with the same torch thread count, the libraries taking turns step by
step (a TRL callback runs one mlakit step after each of TRL's), so a busy spell
of the machine slows both. Each keeps its own random stream.
Prompt order differs (each library shuffles with its own seeded sampler), so
the reward curves are two samples of the same experiment, not equal numbers.

Target (issue 14): mlakit at least 3x faster per step than TRL on the CPU.

Without TRL installed (``pip install trl``, or the ``bench`` extra) only
mlakit's side runs, and the table says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import machine  # noqa: E402

from mlakit import ModelConfig  # noqa: E402
from mlakit.data import AdditionTask  # noqa: E402
from mlakit.kvcache import format_table  # noqa: E402
from mlakit.model import MiniDeepSeek  # noqa: E402
from mlakit.rl import GRPOConfig, GRPOTrainer  # noqa: E402
from mlakit.tokenizer import SPECIAL_TOKENS, CharTokenizer  # noqa: E402
from mlakit.utils import seed_everything, set_progress  # noqa: E402

DIGITS = set("0123456789")
TAG_TOKENS = [t for t in SPECIAL_TOKENS if t not in ("<pad>", "<bos>", "<eos>")]  # kept when decoding


def make_rewards(problems):
    """accuracy (strict verifier, looked up by prompt text: TRL passes prompts as strings) and digit share."""
    task = AdditionTask(1, 2)
    by_prompt = {p.prompt: p for p in problems}

    def accuracy(prompts, completions, **kwargs):
        return [1.0 if task.verify(by_prompt[p], c) else 0.0 for p, c in zip(prompts, completions, strict=True)]

    def digits(prompts, completions, **kwargs):
        return [sum(ch in DIGITS for ch in c) / max(1, len(c)) for c in completions]

    return [accuracy, digits]


def hf_tokenizer(tok: CharTokenizer):
    """A transformers tokenizer with CharTokenizer's ids: one token per character, <bos> prepended."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={s: i for i, s in enumerate(tok.itos)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    core.decoder = decoders.Fuse()  # no spaces between tokens
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tok.bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.add_tokens(TAG_TOKENS)  # R1's tags: whole tokens, written out by decode as mlakit writes them
    return fast


def mlakit_trainer(model, tok, prompts, rewards, args) -> GRPOTrainer:
    cfg = GRPOConfig(num_generations=args.G, prompts_per_step=args.prompts, max_completion_length=args.max_len,
                     temperature=args.temperature, loss_type=args.loss_type, learning_rate=args.lr,
                     max_steps=args.steps, bias_update_gamma=0.0, seed=args.seed)
    return GRPOTrainer(model, tok, rewards, prompts, cfg)


class Timed:
    """Runs and times one mlakit GRPO step at a time; keeps the times and the mean rewards."""

    def __init__(self, trainer: GRPOTrainer, seed: int):
        self.trainer, self.times, self.curve, self.rollout_times = trainer, [], [], []
        rollout = trainer.rollout

        def timed_rollout(indices):  # the sampling part of a step, timed apart from the update
            start = time.perf_counter()
            out = rollout(indices)
            self.rollout_times.append(time.perf_counter() - start)
            return out

        trainer.rollout = timed_rollout
        outside = torch.random.get_rng_state()  # mlakit samples from torch's global generator: give it its own
        torch.manual_seed(seed)
        self.rng_state = torch.random.get_rng_state()
        torch.random.set_rng_state(outside)

    def step(self) -> None:
        outside = torch.random.get_rng_state()
        torch.random.set_rng_state(self.rng_state)  # TRL's sampling in between does not change mlakit's draws
        start = time.perf_counter()
        record = self.trainer.train_step()
        self.times.append(time.perf_counter() - start)
        self.curve.append(record["reward"])
        self.rng_state = torch.random.get_rng_state()
        torch.random.set_rng_state(outside)


def run_alone(ours: Timed, steps: int) -> None:
    for _ in range(steps):
        ours.step()


def run_trl(folder: Path, tok, prompts, rewards, args, out_dir: Path, ours: Timed) -> tuple[list[float], list[float]]:
    """TRL's GRPOTrainer on the exported model; after each of its steps, one mlakit step (interleaved, so a
    busy spell of the machine slows both rather than one)."""
    from datasets import Dataset
    from transformers import DeepseekV3ForCausalLM, TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer as TRLTrainer

    hf_tok = hf_tokenizer(tok)
    for p in prompts:  # the two tokenizers must agree token for token
        assert hf_tok(p)["input_ids"] == tok.encode(p, bos=True), p
    model = DeepseekV3ForCausalLM.from_pretrained(folder, dtype=torch.float32)

    class Interleave(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], 0.0

        def on_step_begin(self, *a, **k):
            self._start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self._start)
            ours.step()

    timer = Interleave()
    config = TRLConfig(output_dir=str(out_dir), per_device_train_batch_size=args.G * args.prompts,
                       num_generations=args.G, max_completion_length=args.max_len, temperature=args.temperature,
                       loss_type=args.loss_type, beta=0.0, learning_rate=args.lr, lr_scheduler_type="constant",
                       adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0, max_grad_norm=1.0,
                       max_steps=args.steps, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                       seed=args.seed, disable_tqdm=True, bf16=False, dataloader_num_workers=0,
                       log_level="error")
    trainer = TRLTrainer(model=model, reward_funcs=rewards, args=config, processing_class=hf_tok,
                         train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]), callbacks=[timer])
    trainer.train()
    curve = [log["reward"] for log in trainer.state.log_history if "reward" in log]
    return timer.times, curve


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--ckpt", default=None, help="start from this mlakit checkpoint instead of random weights")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--G", type=int, default=8, help="num_generations")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--max-len", type=int, default=16, help="max_completion_length")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--loss-type", default="dapo")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_progress(False)
    tok = CharTokenizer()
    if args.ckpt:
        model = MiniDeepSeek.from_pretrained(args.ckpt)
    else:
        seed_everything(args.seed)
        model = MiniDeepSeek(ModelConfig.from_preset(args.preset, vocab_size=tok.vocab_size,
                                                     num_nextn_predict_layers=0))
    problems = AdditionTask(1, 2).all_problems()[::37][:200]  # a spread of 1- and 2-digit additions
    prompts = [p.prompt for p in problems]
    rewards = make_rewards(problems)
    try:
        import trl  # noqa: F401
        have_trl = True
    except ImportError:
        have_trl = False
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save_pretrained(Path(tmp) / "model")  # the weights both libraries start from
        ours = Timed(mlakit_trainer(model, tok, prompts, rewards, args), args.seed)
        if have_trl:
            trl_times, trl_curve = run_trl(folder, tok, prompts, rewards, args, Path(tmp) / "trl", ours)
        else:
            run_alone(ours, args.steps)
        ours_times, ours_curve, ours_rollouts = ours.times, ours.curve, ours.rollout_times
    print(f"GRPO step on {machine('cpu')}")
    print(f"{args.preset}: {model.num_parameters():,} parameters; G={args.G} x {args.prompts} prompts, "
          f"max_completion_length={args.max_len}, temperature={args.temperature}, loss_type={args.loss_type}, "
          f"{args.steps} steps (median after the first)\n")
    ours = statistics.median(ours_times[1:] or ours_times)
    sampling = statistics.median(ours_rollouts[1:] or ours_rollouts)
    rows = [{"library": "mlakit GRPOTrainer", "s / step": f"{ours:.3f}", "vs TRL": ""}]
    if have_trl:
        theirs = statistics.median(trl_times[1:] or trl_times)
        rows[0]["vs TRL"] = f"{theirs / ours:.1f}x faster"
        rows.append({"library": f"TRL {trl.__version__} GRPOTrainer", "s / step": f"{theirs:.3f}", "vs TRL": "1.0x"})
    else:
        rows.append({"library": "TRL GRPOTrainer", "s / step": "not installed", "vs TRL": "pip install trl"})
    print(format_table(rows))
    print(f"\nmlakit's step: rollouts (prefill, decode, decoding to text) {sampling:.3f} s, the rest (rewards, "
          f"the policy's forward and backward, AdamW) {ours - sampling:.3f} s (medians): "
          f"however fast the sampling, the step cannot take less than the rest.")
    print("\nmean reward per step (accuracy + digit share):")
    curve_rows = []
    for i, r in enumerate(ours_curve):
        row = {"step": str(i), "mlakit": f"{r:.3f}"}
        if have_trl:
            row["TRL"] = f"{trl_curve[i]:.3f}" if i < len(trl_curve) else ""
        curve_rows.append(row)
    print(format_table(curve_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
