"""lm-eval bridge, offline: custom tasks over local files, scored on models whose answers are known."""

from __future__ import annotations

import json

import datasets
import huggingface_hub.constants
import pytest
import torch
from eval_support import train_memorizer

from psft.cli import main as psft_main
from psft.eval.generate import generate
from psft.eval.lmeval import lm_eval_metrics, run_lm_eval

GEN_TASK = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["<|im_end|>"]
  do_sample: false
  max_gen_toks: 8
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

MC_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

PROMPTS = ["abc", "hello", "q", "xyz 12"]
MC = [("abc", ["cba", "xyz"]), ("hello", ["world", "olleh"]), ("xy", ["yx", "zz"]), ("1+1=", ["2", "3"])]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: the hub and datasets libraries in offline mode, as a fresh CI machine without access."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def memorizer():
    torch.set_num_threads(1)
    return train_memorizer()


def _loglik(model, tok, context: str, continuation: str) -> float:
    """Sum of log-probs of the continuation's tokens after the context (what lm-eval's `acc` compares)."""
    ctx, cont = tok(context)["input_ids"], tok(continuation)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].log_softmax(-1)
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


def write_tasks(tmp_path, model, tok):
    """Task YAMLs over local files, with expected scores from our own greedy decoding and log-likelihoods."""
    greedy = [o[0] for o in generate(model, tok, PROMPTS, max_new_tokens=8)]
    answers = [g if i % 2 == 0 else g + "!" for i, g in enumerate(greedy)]  # even rows right, odd rows wrong
    gen_rows = [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, answers, strict=True)]
    mc_rows, hits = [], []
    for i, (q, choices) in enumerate(MC):
        scores = [_loglik(model, tok, q, " " + c) for c in choices]
        best = max(range(len(choices)), key=scores.__getitem__)
        label = best if i < 3 else 1 - best  # three right, one wrong
        mc_rows.append({"question": q, "choices": choices, "label": label})
        hits.append(label == best)
    for name, rows, template in (("gen", gen_rows, GEN_TASK), ("mc", mc_rows, MC_TASK)):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp_path / f"tiny_{name}.yaml").write_text(template.format(data=data))
    return 0.5, sum(hits) / len(hits)


def test_lm_eval_runs_offline_on_an_in_memory_model(memorizer, tmp_path):
    model, tok = memorizer
    expected_gen, expected_mc = write_tasks(tmp_path, model, tok)
    assert expected_mc == 0.75
    results = run_lm_eval(model, ["tiny_gen", "tiny_mc"], tokenizer=tok, include_path=tmp_path, batch_size=2)
    metrics = lm_eval_metrics(results)
    assert metrics["lm_eval/tiny_gen/exact_match"] == expected_gen
    assert metrics["lm_eval/tiny_mc/acc"] == expected_mc
    assert metrics["lm_eval/tiny_mc/acc_stderr"] > 0


def test_lm_eval_from_a_checkpoint_through_the_cli(memorizer, tmp_path, capsys):
    model, tok = memorizer
    expected_gen, _ = write_tasks(tmp_path, model, tok)
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    rc = psft_main(
        [
            "eval",
            "--model",
            str(tmp_path / "ckpt"),
            "--lm-eval-tasks",
            "tiny_gen",
            "--lm-eval-include",
            str(tmp_path),
            "--output",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["lm_eval"]["lm_eval/tiny_gen/exact_match"] == expected_gen
    direct = run_lm_eval(str(tmp_path / "ckpt"), ["tiny_gen"], include_path=tmp_path, device="cpu")
    assert lm_eval_metrics(direct)["lm_eval/tiny_gen/exact_match"] == expected_gen
    rc = psft_main(
        [
            "eval",
            "--model",
            str(tmp_path / "ckpt"),
            "--lm-eval-tasks",
            "tiny_gen",
            "--lm-eval-include",
            str(tmp_path / "nowhere"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 2 and "lm-eval include path not found" in capsys.readouterr().err
