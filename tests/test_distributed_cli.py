"""`mlakit train --nproc 2`: the command relaunches itself under torchrun as two data-parallel processes."""

import csv
import subprocess
import sys

from mlakit.cli import main


def test_nproc_must_divide_the_batch(capsys):
    assert main(["train", "--nproc", "2", "--batch-size", "5", "--out", "unused"]) == 2
    assert "--batch-size 5 is invalid with --nproc 2" in capsys.readouterr().out


def test_train_nproc_2_writes_one_checkpoint(tmp_path):
    out = tmp_path / "ckpt"
    done = subprocess.run([sys.executable, "-m", "mlakit.cli", "train", "--nproc", "2", "--steps", "2",
                           "--batch-size", "8", "--digits", "1", "--max-len", "32", "--out", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("checkpoint written to") == 1  # rank 0 speaks and writes
    assert {"model.safetensors", "optimizer.safetensors", "trainer.json", "tokenizer.json", "metrics.csv"} <= {
        p.name for p in out.iterdir()}
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1] and all(float(r["loss"]) > 0 for r in rows)
