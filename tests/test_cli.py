"""The `mlakit train` and `mlakit generate` commands end to end (a few steps of a small run)."""

import json

import pytest
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
    assert cli.main(["generate", "--ckpt", str(tmp_path / "nowhere"), "--prompt", "1+1="]) == 2
    assert "no checkpoint folder" in capsys.readouterr().out
    assert cli.main(["generate", "--ckpt", str(tmp_path), "--prompt", "1+1="]) == 2
    assert "no config.json; no model.safetensors" in capsys.readouterr().out


# ------------------------------------------------------------------ bad input: one line, exit status 2

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "run"
    before = torch.get_num_threads()
    try:
        assert cli.main(["train", "--steps", "2", "--batch-size", "4", "--out", str(folder), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(before)
    return folder


def _refused(argv, capsys, *phrases):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mlakit {argv[0]}: "), captured.out
    assert "Traceback" not in captured.out + captured.err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("options, phrases", [
    (["--max-new-tokens", "-3"], ["--max-new-tokens -3", ">= 0"]),
    (["--temperature", "-1"], ["temperature=-1.0", ">= 0"]),
    (["--top-p", "2"], ["top_p=2.0", "(0, 1]"]),
    (["--top-k", "0"], ["top_k=0", ">= 1"]),
    (["--max-new-tokens", "100"], ["max_position_embeddings=64"]),
])
def test_generate_refuses_bad_options(checkpoint, capsys, options, phrases):
    _refused(["generate", "--ckpt", str(checkpoint), "--prompt", "1+1=", *options], capsys, *phrases)


def test_generate_refuses_an_empty_prompt(checkpoint, capsys):
    _refused(["generate", "--ckpt", str(checkpoint), "--prompt", "1+1=", "--prompt", ""], capsys,
             "--prompt number 2 is empty")


def _damaged_copy(checkpoint, tmp_path, name, content):
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(checkpoint, folder)
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_bytes(content(folder / name))
    return folder


@pytest.mark.parametrize("name, content, phrases", [
    ("model.safetensors", lambda p: p.read_bytes()[:1000], ["model.safetensors", "truncated or damaged"]),
    ("model.safetensors", lambda p: p.read_bytes()[:-100], ["model.safetensors", "truncated or damaged"]),
    ("model.safetensors", lambda p: b"", ["model.safetensors", "0 bytes"]),
    ("model.safetensors", lambda p: bytes(range(256)) * 20, ["model.safetensors", "not a readable safetensors"]),
    ("model.safetensors", None, ["no model.safetensors"]),
    ("config.json", None, ["no config.json"]),
    ("config.json", lambda p: b"{not json", ["config.json: not valid JSON"]),
    ("tokenizer.json", None, ["tokenizer.json: missing"]),
    ("tokenizer.json", lambda p: b"[1, 2", ["tokenizer.json: not valid JSON"]),
])
def test_generate_names_the_damaged_file(checkpoint, tmp_path, capsys, name, content, phrases):
    folder = _damaged_copy(checkpoint, tmp_path, name, content)
    _refused(["generate", "--ckpt", str(folder), "--prompt", "1+1="], capsys, *phrases)


@pytest.mark.parametrize("options, phrases", [
    (["--steps", "0"], ["--steps 0", ">= 1"]),
    (["--steps", "-4"], ["--steps -4"]),
    (["--lr", "-1"], ["--lr -1.0", "> 0"]),
    (["--batch-size", "0"], ["--batch-size 0"]),
    (["--digits", "0"], ["--digits 0"]),
    (["--threads", "0"], ["--threads 0"]),
    (["--max-len", "8"], ["--max-len 8 is shorter than the longest training example (28 tokens", "--max-len 28"]),
])
def test_train_refuses_bad_options_before_training(tmp_path, capsys, options, phrases):
    out = tmp_path / "run"
    _refused(["train", "--out", str(out), "--steps", "1", *options], capsys, *phrases)
    assert not (out / "model.safetensors").exists()


def test_train_checks_the_output_folder_first(tmp_path, capsys):
    existing = tmp_path / "file.txt"
    existing.write_text("keep me")
    _refused(["train", "--out", str(existing), "--steps", "1"], capsys, "is an existing file")
    assert existing.read_text() == "keep me"
    blocked = existing / "run"  # a folder inside a file cannot be made
    _refused(["train", "--out", str(blocked), "--steps", "1"], capsys, "cannot be written")


def test_train_refuses_a_preset_that_cannot_fit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_available_memory", lambda: 16 * 10**9)
    line = _refused(["train", "--preset", "deepseek-v3", "--out", str(tmp_path / "v3"), "--steps", "1"], capsys,
                    "--preset deepseek-v3 needs about", "16.0 GB available", "--preset nano")
    assert "parameters x 16 bytes" in line and not (tmp_path / "v3").exists()


def test_train_lists_every_file_it_wrote(checkpoint):
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == ["config.json", "metrics.csv", "model.safetensors", "optimizer.safetensors", "tokenizer.json",
                     "trainer.json"]


def test_cache_and_grade_refuse_bad_input(tmp_path, capsys):
    _refused(["cache", "--context", "-5"], capsys, "--context -5", ">= 1")
    readme = tmp_path / "README.md"
    readme.write_text("# not a notebook\n")
    _refused(["grade", str(readme)], capsys, "is not a Jupyter notebook")
