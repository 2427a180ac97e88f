"""The `mlakit train` and `mlakit generate` commands end to end (a few steps of a small run)."""

import json

import torch

from mlakit import cli


def test_train_then_generate(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        code = cli.main(["train", "--steps", "6", "--batch-size", "8", "--out", str(tmp_path / "run"), "--threads", "1"])
    finally:
        torch.set_num_threads(before)
    assert code == 0
    out = capsys.readouterr().out
    assert "validation exact match" in out and "checkpoint written" in out
    for name in ("model.safetensors", "optimizer.safetensors", "config.json", "tokenizer.json", "metrics.csv",
                 "trainer.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert json.loads((tmp_path / "run" / "trainer.json").read_text())["step"] == 6
    assert cli.main(["generate", "--ckpt", str(tmp_path / "run"), "--prompt", "12+34=", "--prompt", "1+1=",
                     "--max-new-tokens", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("12+34=") and lines[1].startswith("1+1=")


def test_generate_explains_bad_input(tmp_path, capsys):
    assert cli.main(["generate", "--ckpt", str(tmp_path), "--prompt", "1+1="]) == 2
    assert "no checkpoint" in capsys.readouterr().out
