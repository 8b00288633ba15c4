"""Where a study run's time goes on SmolLM2-135M-Instruct: one `psft compare` run (`psft.experiments.runner.run_method`,
the instruct-model defaults: word problems in-domain; trivia, instruct, add, json out-of-domain; greedy, 64
new tokens) with periodic evaluation, timed by part. Prints one JSON object.

    PSFT_BENCH_SMOLLM2=DIR python benchmarks/bench_study_breakdown.py --steps 4 --eval-every 4 --prompts 8

Parts: the old-policy pass (`PSFTTrainer._old_log_probs`), the training steps (the rest of `train()` outside
evaluation), and per evaluation the generation (`evaluate_generation`: decoding and answer checking), the
drift scoring (`measure_drift`) and, once, the base model's drift statistics (`compute_reference_stats`).
The study's `entropy` is the training forward's (logged for free); the evaluation-set token entropy of
`psft.eval.entropy` (what `psft.stages.chain` adds per evaluation) is timed once on the final model, and so is one
generation with the decoding before this change (`decoder="hf"`), for the before/after of the split.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import SMOLLM2_ENV, setup_malloc  # noqa: E402

import psft.eval.callback as callback  # noqa: E402
from psft.core.trainer import PSFTTrainer  # noqa: E402
from psft.experiments.plan import CompareConfig
from psft.experiments.runner import _eval_records, run_method

TIMES: dict[str, list[float]] = defaultdict(list)


def timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - start)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (batch 8)")
    parser.add_argument("--eval-every", type=int, default=4, help="steps between evaluations (and at step 0)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per evaluation set (5 sets)")
    parser.add_argument("--k", type=int, default=4, help="PSFT mini-batches per rollout")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc = setup_malloc(False)
    model = os.environ.get(SMOLLM2_ENV)
    if not model:
        raise SystemExit(f"needs {SMOLLM2_ENV}=DIR, a `psft convert` output of SmolLM2-135M-Instruct")
    PSFTTrainer._old_log_probs = timed("old_policy_pass", PSFTTrainer._old_log_probs)
    generation = callback.evaluate_generation
    callback.evaluate_generation = timed("generation", generation)
    callback.measure_drift = timed("drift", callback.measure_drift)
    callback.compute_reference_stats = timed("drift_base_stats", callback.compute_reference_stats)
    out = tempfile.mkdtemp(prefix="psft-breakdown-")
    config = CompareConfig.for_model(
        model=model, eval_size=args.prompts, eval_every=args.eval_every, output_dir=out
    )
    config.training = {**config.training, "max_steps": args.steps}
    run = next(r for r in config.runs() if r["overrides"].get("loss_type") == "psft")
    run["overrides"] = {**run["overrides"], "mini_batches_per_rollout": args.k}
    run["id"] = run["name"] = f"psft-K{args.k}"  # the preset's name says K=4
    records = _eval_records(config)
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = run_method(config, run, records, Path(out) / run["id"])
    wall = time.perf_counter() - start

    # once on a fresh copy of the base model: the other decoder and the evaluation-set token entropy
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from psft.eval.entropy import mean_token_entropy
    from psft.stages.chain import _demonstration

    tok = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model).eval()
    rows = records[0] + records[1]
    extra = {}
    for decoder in ("hf", "fast"):
        t = time.perf_counter()
        generation(policy, tok, rows, max_new_tokens=config.max_new_tokens, batch_size=256, checker="math",
                   progress=False, decoder=decoder)  # fmt: skip
        extra[f"generation_{decoder}_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    mean_token_entropy(policy, tok, [d for d in map(_demonstration, rows) if d is not None])
    extra["eval_set_entropy_s"] = round(time.perf_counter() - t, 2)

    evals = len(TIMES["generation"])
    parts = {name: round(sum(v), 2) for name, v in TIMES.items()}
    in_train = result["train_s"] - parts.get("drift_base_stats", 0.0)  # train_s excludes the callback's evals
    parts["training_steps"] = round(in_train - parts.get("old_policy_pass", 0.0), 2)
    parts["setup_and_other"] = round(wall - sum(parts.values()), 2)  # loading, trainer setup, logging
    report: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (float32)",
        "threads": torch.get_num_threads(),
        "malloc": malloc,
        "method": f"psft K={args.k}",
        "batch": config.training["per_device_train_batch_size"],
        "steps": result["steps"],
        "evaluations": evals,
        "prompts_per_evaluation": len(rows),
        "max_new_tokens": config.max_new_tokens,
        "wall_s": round(wall, 2),
        "parts_s": parts,
        "share_of_wall": {k: round(v / wall, 3) for k, v in parts.items()},
        "per_call_s": {name: [round(x, 2) for x in v] for name, v in TIMES.items()},
        "per_step_s": round(parts["training_steps"] / max(1, result["steps"]), 2),
        "per_evaluation_s": {
            "generation": round(parts["generation"] / evals, 2),
            "drift": round(parts.get("drift", 0.0) / max(1, len(TIMES["drift"])), 2),
        },
        "final_check_on_base_model": extra,
        "load_average_before_after": [round(x, 2) for x in load_before + os.getloadavg()],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
