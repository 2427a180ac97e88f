"""``mlakit grpo`` through its own register(): a short run writes a checkpoint; bad input is one line, status 2."""

import argparse
import csv
import json

import pytest

from mlakit import ModelConfig
from mlakit.model import MiniDeepSeek
from mlakit.rl.cli import register
from mlakit.tokenizer import CharTokenizer
from mlakit.utils import seed_everything

TOK = CharTokenizer()
TINY = ModelConfig.from_preset("nano", vocab_size=TOK.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                               qk_rope_head_dim=8, v_head_dim=8, intermediate_size=64, moe_intermediate_size=16,
                               max_position_embeddings=48)
FAST = ["--num-generations", "2", "--prompts-per-step", "2", "--max-completion-length", "6", "--prompts", "10",
        "--eval-problems", "2"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    seed_everything(0)
    MiniDeepSeek(TINY).save_pretrained(folder)
    TOK.save(folder / "tokenizer.json")
    return folder


def _run(argv, monkeypatch):
    monkeypatch.setenv("MLAKIT_PROGRESS", "0")
    parser = argparse.ArgumentParser(prog="mlakit")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["grpo", *argv])
    return args.func(args)


def test_a_short_run_writes_checkpoint_tokenizer_and_metrics(base, tmp_path, monkeypatch, capsys):
    out = tmp_path / "grpo"
    rc = _run(["--ckpt", str(base), "--task", "addition", "--steps", "2", "--out", str(out), *FAST,
               "--loss-type", "dr_grpo", "--scale-rewards", "none", "--epsilon-high", "0.28"], monkeypatch)
    assert rc == 0, capsys.readouterr().out
    assert {"config.json", "model.safetensors", "optimizer.safetensors", "trainer.json", "tokenizer.json",
            "metrics.csv"} <= {p.name for p in out.iterdir()}
    meta = json.loads((out / "trainer.json").read_text())
    assert meta["step"] == 2 and meta["grpo_config"]["loss_type"] == "dr_grpo"
    assert meta["grpo_config"]["epsilon_high"] == 0.28 and meta["grpo_config"]["scale_rewards"] == "none"
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 2 and "reward_accuracy" in rows[0] and "reward_format" in rows[0]
    printed = capsys.readouterr().out
    assert "held_out_accuracy" in printed and "checkpoint written to" in printed
    rc = _run(["--ckpt", str(base), "--task", "addition", "--steps", "3", "--out", str(tmp_path / "more"), *FAST,
               "--loss-type", "dr_grpo", "--scale-rewards", "none", "--epsilon-high", "0.28",
               "--resume", str(out)], monkeypatch)
    assert rc == 0
    assert json.loads((tmp_path / "more" / "trainer.json").read_text())["step"] == 3


@pytest.mark.parametrize("extra,message", [
    (["--loss-type", "ppo"], "mlakit grpo: --loss-type 'ppo' is invalid: must be one of 'grpo', 'bnpo', 'dr_grpo', "
                             "'dapo'"),
    (["--num-generations", "1"], "mlakit grpo: --num-generations 1 is invalid: must be an integer >= 2"),
    (["--epsilon-high", "-1"], "mlakit grpo: --epsilon-high -1.0 is invalid"),
    (["--reward-weights", "1,x"], "mlakit grpo: --reward-weights '1,x' is not a comma-separated list"),
    (["--reward-weights", "1"], "mlakit grpo: --reward-weights '1' gives 1 weights; give 2, for accuracy,format"),
    (["--knob", "max_digits=99"], "mlakit grpo: max_digits=99 is invalid"),
    (["--prompts-per-step", "50"], "mlakit grpo: 10 prompts, but a step needs prompts_per_step=50"),
])
def test_bad_input_is_one_line_and_status_2(base, tmp_path, monkeypatch, capsys, extra, message):
    rc = _run(["--ckpt", str(base), "--task", "addition", "--steps", "1", "--out", str(tmp_path / "o"), *FAST,
               *extra], monkeypatch)
    printed = capsys.readouterr().out.strip()
    assert rc == 2
    assert printed.startswith(message) and "\n" not in printed, printed


def test_missing_checkpoint_and_unknown_task(base, tmp_path, monkeypatch, capsys):
    rc = _run(["--ckpt", str(tmp_path / "nope"), "--task", "addition", "--steps", "1", "--out", str(tmp_path)],
              monkeypatch)
    assert rc == 2 and "no model.safetensors" in capsys.readouterr().out
    rc = _run(["--ckpt", str(base), "--task", "chess", "--steps", "1", "--out", str(tmp_path)], monkeypatch)
    assert rc == 2 and "unknown task 'chess'" in capsys.readouterr().out
    rc = _run(["--ckpt", str(base), "--task", "addition", "--steps", "0", "--out", str(tmp_path)], monkeypatch)
    assert rc == 2 and "--steps 0 is invalid" in capsys.readouterr().out
