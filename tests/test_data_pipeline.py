"""build_dataset, JSONL records, filters, the data card and the `mlakit data` command end to end."""

import argparse
import json
from types import SimpleNamespace

import pytest
import torch

from mlakit import ModelConfig
from mlakit.data import (
    DataCard,
    EmptyDatasetError,
    JSONLError,
    Problem,
    Record,
    Teacher,
    apply_filters,
    build_dataset,
    card_path,
    format_filter,
    get_task,
    length_filter,
    read_jsonl,
    verifier_filter,
    write_jsonl,
)
from mlakit.data import cli as data_cli
from mlakit.model import MiniDeepSeek
from mlakit.tokenizer import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

# --- records -----------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path):
    records = [Record("a-0", "addition", "1+2=", "3", "3", "generator", {"key": "[1,2]", "difficulty": 1}),
               Record("t-1", "toolcall", "add 1 and 2\n", '{"name": "add"}', "x", "teacher", {"note": "ünï"})]
    path = write_jsonl(tmp_path / "sub" / "d.jsonl", records)
    assert path.read_text(encoding="utf-8").count("\n") == 2
    assert read_jsonl(path) == records
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0]) == records[0].to_dict()


@pytest.mark.parametrize("line, message", [
    ('{"id": "x", "task"', r"bad\.jsonl, line 2: not valid JSON \(Expecting"),
    ("[1, 2]", r"bad\.jsonl, line 2: a JSON list, not an object"),
    ('{"id": "x"}', r"bad\.jsonl, line 2: missing field 'task'"),
])
def test_a_bad_jsonl_line_names_the_file_and_line(tmp_path, line, message):
    good = json.dumps(Record("a", "addition", "1+1=", "2", "2").to_dict())
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n" + good + "\n")
    with pytest.raises(JSONLError, match=message):
        read_jsonl(path)


# --- filters -----------------------------------------------------------------------------------


def test_filters_drop_and_count():
    task = get_task("addition")
    ok = Record("0", "addition", "1+2=", "<think>1+2=3</think><answer>3</answer>", "3", problem=Problem(1, 2))
    plain = Record("1", "addition", "1+2=", "3", "3", problem=Problem(1, 2))
    wrong = Record("2", "addition", "1+2=", "<think>x</think><answer>4</answer>", "3", problem=Problem(1, 2))
    long = Record("3", "addition", "1+2=", "<think>" + "1" * 50 + "</think><answer>3</answer>", "3",
                  problem=Problem(1, 2))
    kept, dropped = apply_filters([ok, plain, wrong, long],
                                  [length_filter(max_chars=50), format_filter(), verifier_filter(task)])
    assert kept == [ok] and dropped == {"length": 1, "format": 1, "verifier": 1}
    assert format_filter(reasoning=False)(plain) and not format_filter(reasoning=False)(ok)
    tok = CharTokenizer()
    assert length_filter(tokenizer=tok, max_tokens=7)(plain)  # <bos> 1 + 2 = 3 <eos>: 7 tokens
    assert not length_filter(tokenizer=tok, max_tokens=6)(plain)
    with pytest.raises(ValueError, match="holds no problem"):
        verifier_filter(task)(Record("9", "addition", "1+2=", "3", "3"))


# --- the pipeline ------------------------------------------------------------------------------


def test_build_dataset_counts_every_stage_and_is_deterministic():
    task = get_task("addition", max_digits=1)  # 100 distinct keys: many duplicates among 300 draws
    a = build_dataset(task, 300, seed=3, progress=False)
    b = build_dataset(task, 300, seed=3, progress=False)
    assert [r.to_dict() for r in a.records] == [r.to_dict() for r in b.records] and a.card == b.card
    card = a.card
    keys = {tuple(sorted(p.operands)) for p in task.generate(300, seed=3)}
    assert card.generated == 300 and card.failed_verification == 0
    assert card.kept == len(keys) == len(a.records) and card.exact_duplicates == 300 - len(keys)
    assert len({r.meta["key"] for r in a.records}) == card.kept
    first = a.records[0]
    assert first.id == "addition-3-0000000" and first.source == "generator" and first.meta["seed"] == 3
    assert first.completion == first.problem.completion() and task.verify(first.problem, first.completion)
    assert build_dataset(task, 300, seed=4, progress=False).records != a.records


def test_build_dataset_near_dedup_and_decontamination():
    task = get_task("wordproblem", min_digits=2, max_digits=3)
    eval_problems = list(get_task("addition", min_digits=2, max_digits=3).generate(300, seed=99))
    settings = dict(seed=0, reasoning=True, near_threshold=0.5, near_n=3, progress=False)
    ds = build_dataset(task, 400, eval_items=eval_problems, **settings)
    free = build_dataset(task, 400, **settings)
    card = ds.card
    assert card.near_duplicates > 0  # one template, numbers a digit apart: 3-gram shingles overlap >= 0.5
    assert card.contaminated > 0 and card.kept + card.contaminated == free.card.kept
    eval_keys = {json.dumps(list(p.key), separators=(",", ":")) for p in eval_problems}
    assert not {r.meta["key"] for r in ds.records} & eval_keys  # word problems hiding a test sum are gone
    assert {r.meta["key"] for r in free.records} & eval_keys
    assert all(r.completion.startswith("<think>") and r.completion.endswith("</answer>") for r in ds.records)
    card.check()


def test_an_empty_dataset_is_an_error_showing_the_card():
    with pytest.raises(EmptyDatasetError, match=r"(?s)no records left.*filtered: length.*kept\s+0") as e:
        build_dataset(get_task("addition"), 20, filters=[length_filter(max_chars=3)], progress=False)
    assert e.value.card.filtered == {"length": e.value.card.generated - e.value.card.exact_duplicates}


class Oracle(torch.nn.Module):
    """Writes the right plain answer of "a+b=", then <eos> (no cache: Teacher(use_cache=False))."""

    def forward(self, ids, cache=None, mask=None):
        tok = CharTokenizer()
        logits = torch.full((ids.shape[0], ids.shape[1], tok.vocab_size), -1e4)
        for row, seq in enumerate(ids.tolist()):
            text = tok.decode([t for t in seq if t not in (tok.pad_id, tok.bos_id)])
            prompt, _, written = text.partition("=")
            script = tok.encode(str(sum(map(int, prompt.split("+")))) + "<eos>")
            logits[row, -1, script[len(written)] if len(written) < len(script) else tok.eos_id] = 0.0
        return SimpleNamespace(logits=logits)


def test_teacher_mode_keeps_verified_samples_per_key():
    task = get_task("addition", with_steps=False)
    teacher = Teacher(Oracle(), CharTokenizer(), samples=3, max_new_tokens=5, batch_size=8, use_cache=False)
    ds = build_dataset(task, 10, seed=0, teacher=teacher, progress=False)
    card = ds.card
    assert card.source == "teacher" and card.generated == 30 and card.failed_verification == 0
    assert card.teacher["acceptance"] == 1.0 and card.teacher["pass_at_k"]["1"] == 1.0
    assert all(r.source == "teacher" and r.completion == r.answer for r in ds.records)
    assert card.exact_duplicates == 30 - card.kept  # three identical samples per prompt: one kept
    assert [r.meta["sample"] for r in ds.records] == [0] * card.kept
    every = build_dataset(task, 10, seed=0, teacher=teacher, per_key=None, progress=False)
    assert every.card.kept == card.kept  # identical samples are text duplicates even without a per-key limit


class TwoWays(torch.nn.Module):
    """Answers "a+b=" right in one of two forms, chosen by the first sampled token: plain, or R1's."""

    def forward(self, ids, cache=None, mask=None):
        tok = CharTokenizer()
        logits = torch.full((ids.shape[0], ids.shape[1], tok.vocab_size), -1e4)
        for row, seq in enumerate(ids.tolist()):
            seq = [t for t in seq if t not in (tok.pad_id, tok.bos_id)]
            cut = seq.index(tok.token_id("=")) + 1
            answer = str(sum(map(int, tok.decode(seq[:cut - 1]).split("+"))))
            written = seq[cut:]
            scripts = [tok.encode(answer + "<eos>"), tok.encode(f"<think>x</think><answer>{answer}</answer><eos>")]
            nxt = {s[len(written)] for s in scripts if s[:len(written)] == written and len(written) < len(s)}
            for t in nxt or {tok.eos_id}:
                logits[row, -1, t] = 0.0
        return SimpleNamespace(logits=logits)


def test_distinct_samples_of_one_prompt_survive_near_dedup_with_per_key_none():
    task = get_task("addition", with_steps=False)
    teacher = Teacher(TwoWays(), CharTokenizer(), samples=6, max_new_tokens=24, use_cache=False)
    every = build_dataset(task, 8, seed=0, teacher=teacher, per_key=None, progress=False)
    one = build_dataset(task, 8, seed=0, teacher=teacher, per_key=1, progress=False)
    assert every.card.failed_verification == 0 and every.card.near_duplicates == 0
    per_prompt = {}
    for r in every.records:
        per_prompt.setdefault(r.prompt, set()).add(r.completion)
    assert all(len(c) == 2 for c in per_prompt.values())  # both forms of every prompt, nothing else
    assert len(every.records) == 2 * len(per_prompt) == 2 * one.card.kept


# --- the CLI -----------------------------------------------------------------------------------


def _parser():
    parser = argparse.ArgumentParser(prog="mlakit")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


def test_cli_build_then_card(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLAKIT_PROGRESS", "0")
    out = tmp_path / "add.jsonl"
    assert _run(["data", "build", "--task", "addition", "--n", "200", "--out", str(out),
                 "--knob", "max_digits=1", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "data card: task addition (min_digits=1, max_digits=1" in printed and f"records to {out}" in printed
    records = read_jsonl(out)
    card = DataCard.load(card_path(out))
    assert card.generated == 200 and card.kept == len(records) and f"kept {card.kept:,}" in card.one_line()
    assert _run(["data", "card", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exact duplicates" in printed and f"{len(records):,} records" in printed
    assert _run(["data", "build", "--task", "countdown", "--n", "30", "--reasoning", "--out", str(tmp_path / "c.jsonl"),
                 "--eval", str(out)]) == 0


@pytest.mark.parametrize("argv, message", [
    (["data", "build", "--task", "sums", "--n", "5"], "unknown task 'sums'; valid tasks: addition"),
    (["data", "build", "--task", "addition", "--n", "5", "--knob", "max_digits=0"], "max_digits=0 is invalid"),
    (["data", "build", "--task", "addition", "--n", "5", "--knob", "digits"], "--knob 'digits' is not NAME=VALUE"),
    (["data", "build", "--task", "addition", "--n", "5", "--knob", "size=2"], "has no knob 'size'"),
    (["data", "build", "--task", "addition", "--n", "5", "--teacher", "nowhere"], "no checkpoint in nowhere"),
    (["data", "build", "--task", "addition", "--n", "5", "--max-chars", "2"], "no records left"),
])
def test_cli_bad_build_input_is_one_line_and_status_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setenv("MLAKIT_PROGRESS", "0")
    assert _run(argv + ["--out", str(tmp_path / "x.jsonl")]) == 2
    printed = capsys.readouterr().out.strip()
    assert message in printed and len(printed.splitlines()) == 1 and printed.startswith("mlakit data build: ")


def test_cli_card_of_a_bad_or_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    assert _run(["data", "card", str(bad)]) == 2
    assert capsys.readouterr().out.strip() == f"mlakit data card: {bad}, line 1: not valid JSON " \
                                              "(Expecting property name enclosed in double quotes at column 2)"
    assert _run(["data", "card", str(tmp_path / "none.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().out


def test_cli_build_with_a_teacher_checkpoint(tmp_path, capsys, monkeypatch):
    """A random tiny model as teacher: the run is real end to end; nearly all of its samples fail."""
    from mlakit.checkpoint import save_pretrained

    monkeypatch.setenv("MLAKIT_PROGRESS", "0")
    tok = CharTokenizer()
    torch.manual_seed(0)
    config = ModelConfig.from_preset("nano", vocab_size=tok.vocab_size, n_routed_experts=0, num_hidden_layers=1,
                                     max_position_embeddings=24)
    folder = save_pretrained(MiniDeepSeek(config), tmp_path / "teacher")
    tok.save(folder / "tokenizer.json")
    code = _run(["data", "build", "--task", "addition", "--n", "4", "--teacher", str(folder), "--samples", "2",
                 "--max-new-tokens", "8", "--out", str(tmp_path / "t.jsonl")])
    printed = capsys.readouterr().out
    if code == 2:  # nothing verified: the error line carries the card's counts
        assert "no records left" in printed and "generated 8, failed verification 8" in printed
    else:
        assert code == 0 and "source teacher" in printed and "teacher: 2 samples per prompt" in printed
