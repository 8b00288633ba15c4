"""`psft eval` end to end on saved tiny checkpoints: accuracy, samples, drift, and one-line user errors."""

from __future__ import annotations

import json

import pytest
import torch
from eval_support import chat, train_memorizer

from psft.cli import main as psft_main
from psft.data.tiny import make_tiny_llama

ROWS = [
    {"prompt": chat("abc"), "answer": "cba", "task": "rev"},
    {"prompt": chat("hello"), "answer": "olleh", "task": "rev"},
    {"prompt": chat("xy"), "answer": "xy", "task": "rev"},  # wrong: the model says "yx"
    {"prompt": chat("1/2?"), "answer": "0.5", "task": "math", "checker": "math"},
    {
        "prompt": chat("abc"),
        "answer": "cba",
        "task": "fmt",
        "checker": "bracketed",
    },  # the suite's: wants [cba]
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A memorising model and an unrelated random 'base', saved; plus the eval and drift data files."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli")
    model, tok = train_memorizer()
    for name, m in (("tuned", model), ("base", make_tiny_llama(tok, hidden_size=64, intermediate_size=128))):
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "heldout.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in ["some text", "more text!"])
    )
    return root


def test_eval_accuracy_samples_and_drift(checkpoints, tmp_path, capsys):
    root = checkpoints
    argv = [
        "eval",
        "--model",
        str(root / "tuned"),
        "--data",
        str(root / "eval.jsonl"),
        "--output",
        str(tmp_path),
        "--max-new-tokens",
        "20",
        "--drift-base",
        str(root / "base"),
        "--drift-data",
        str(root / "heldout.jsonl"),
        "--drift-top-k",
        "1000",
    ]
    assert psft_main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    gen = metrics["generation"]
    assert (
        gen["overall"]["avg"] == 0.6
        and gen["tasks"]["fmt"]["avg"] == 0
        and gen["tasks"]["rev"]["avg"] == pytest.approx(2 / 3)
    )
    assert gen["tasks"]["math"]["avg"] == 1.0 and gen["tasks"]["math"]["avg_stderr"] is None  # one prompt
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["output"] for s in samples] == ["cba", "olleh", "yx", "\\boxed{0.5}", "cba"]
    assert metrics["drift"]["exact"] and metrics["drift"]["kl"] > 0.1
    assert "avg@1" in capsys.readouterr().out

    same = [
        "eval",
        "--model",
        str(root / "tuned"),
        "--output",
        str(tmp_path / "same"),
        "--drift-base",
        str(root / "tuned"),
        "--drift-data",
        str(root / "heldout.jsonl"),
    ]
    assert psft_main(same) == 0
    assert abs(json.loads((tmp_path / "same" / "metrics.json").read_text())["drift"]["kl"]) < 1e-5


def test_task_filter_and_sampling(checkpoints, tmp_path):
    root = checkpoints
    argv = [
        "eval",
        "--model",
        str(root / "tuned"),
        "--data",
        str(root / "eval.jsonl"),
        "--output",
        str(tmp_path),
        "--task",
        "math",
        "--n",
        "3",
        "--temperature",
        "0.7",
        "--top-p",
        "0.95",
        "--max-new-tokens",
        "20",
    ]
    assert psft_main(argv) == 0
    gen = json.loads((tmp_path / "metrics.json").read_text())["generation"]
    assert gen["n"] == 3 and list(gen["tasks"]) == ["math"] and gen["overall"]["num_prompts"] == 1
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--model", "/nonexistent/ckpt", "--data", "{root}/eval.jsonl"],
            "model directory not found: /nonexistent/ckpt",
        ),
        (["--model", "{root}/tuned", "--data", "{root}/missing.jsonl"], "missing.jsonl: no such data file"),
        (["--model", "{root}/tuned", "--data", "{root}/bad.jsonl"], "bad.jsonl:2: missing field 'prompt'"),
        (
            ["--model", "{root}/tuned", "--data", "{root}/eval.jsonl", "--task", "nope"],
            "no records with task 'nope'",
        ),
        (
            ["--model", "{root}/tuned", "--data", "{root}/eval.jsonl", "--n", "4"],
            "--n > 1 needs --temperature",
        ),
        (["--model", "{root}/tuned"], "nothing to evaluate"),
        (
            ["--model", "{root}/tuned", "--data", "{root}/eval.jsonl", "--checker", "nah"],
            "unknown checker 'nah'",
        ),
        (
            ["--model", "{root}/tuned", "--data", "{root}/eval.jsonl", "--import", "no_such_mod"],
            "--import no_such_mod",
        ),
    ],
)
def test_user_errors_are_one_line(checkpoints, tmp_path, capsys, extra, message):
    (checkpoints / "bad.jsonl").write_text(
        '{"prompt": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n'
    )
    argv = ["eval", "--output", str(tmp_path)] + [a.format(root=checkpoints) for a in extra]
    assert psft_main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("psft eval: error: ") and message in err.splitlines()[-1]
    assert "Traceback" not in err
