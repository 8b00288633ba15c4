"""Where a study run's time goes on SmolLM2-135M-Instruct: one `psft compare` run (`psft.experiments.runner.run_method`,
the instruct-model defaults: word problems in-domain; trivia, instruct, add, json out-of-domain; greedy, 64
new tokens; or a study's YAML with `--config`) with periodic evaluation, timed by part, in wall and CPU time.
Prints one JSON object.

    PSFT_BENCH_SMOLLM2=DIR python benchmarks/bench_study_breakdown.py --steps 4 --eval-every 4 --prompts 8
    python benchmarks/bench_study_breakdown.py --config examples/smollm2-study.yaml --setting psft-K8
        --steps 8 --eval-every 8 --prompts 16 --skip-base-checks     # (one line) the study's settings, shortened

Parts: the old-policy pass (`PSFTTrainer._old_log_probs`), the reference table (`_build_reference_table`, once,
for objectives with a reference), the training steps (the rest of `train()` outside evaluation), and per
evaluation the generation (`evaluate_generation`: decoding and answer checking), the held-out NLL
(`heldout_nll`), the drift scoring (`measure_drift`) and, once, the base model's drift statistics
(`compute_reference_stats`). CPU times (`time.process_time`, one thread) are what an idle core would take; on a
busy machine the wall times are longer.
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
CPU: dict[str, list[float]] = defaultdict(list)


def timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - start)
            CPU[name].append(time.process_time() - cpu)

    return wrapper


def study_run(args: argparse.Namespace, model: str | None, out: str) -> tuple[CompareConfig, dict[str, Any]]:
    """The config (the instruct defaults, or `--config`) shortened to `--steps` and `--prompts` per set, and the
    run to time: the setting (or method) named by `--setting`, else the first PSFT one."""
    if args.config:
        config = CompareConfig.from_yaml(args.config)
        config.model = model or config.model
    elif model:
        config = CompareConfig.for_model(model=model)
    else:
        raise SystemExit(
            f"needs {SMOLLM2_ENV}=DIR (a `psft convert` output of SmolLM2-135M-Instruct) or --config"
        )
    config.eval_size = config.ood_eval_size = args.prompts
    config.eval_every, config.output_dir = args.eval_every, out
    config.training = {**config.training, "max_steps": args.steps}
    plan = config.runs()
    if args.setting:
        run = next((r for r in plan if args.setting in (r["name"], r["method"])), None)
        if run is None:
            raise SystemExit(
                f"--setting {args.setting}: not in the plan ({', '.join(r['name'] for r in plan)})"
            )
    else:
        run = next(r for r in plan if r["overrides"].get("loss_type") == "psft")
    if args.k:
        run["overrides"] = {**run["overrides"], "mini_batches_per_rollout": args.k}
        run["id"] = run["name"] = f"{run['overrides']['loss_type']}-K{args.k}"  # not the preset's K
    return config, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (batch 8)")
    parser.add_argument("--eval-every", type=int, default=4, help="steps between evaluations (and at step 0)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per evaluation set (5 sets)")
    parser.add_argument("--k", type=int, help="PSFT mini-batches per rollout (default: the setting's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--config", help="a compare YAML (a study) whose settings to time, shortened")
    parser.add_argument(
        "--setting", help="the setting or method of the plan to time (default: the first PSFT)"
    )
    parser.add_argument(
        "--skip-base-checks", action="store_true", help="skip the base-model decoder and entropy timings"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc = setup_malloc(False)
    PSFTTrainer._old_log_probs = timed("old_policy_pass", PSFTTrainer._old_log_probs)
    PSFTTrainer._build_reference_table = timed("reference_table", PSFTTrainer._build_reference_table)
    generation = callback.evaluate_generation
    callback.evaluate_generation = timed("generation", generation)
    callback.heldout_nll = timed("heldout_nll", callback.heldout_nll)
    callback.measure_drift = timed("drift", callback.measure_drift)
    callback.compute_reference_stats = timed("drift_base_stats", callback.compute_reference_stats)
    out = tempfile.mkdtemp(prefix="psft-breakdown-")
    config, run = study_run(args, os.environ.get(SMOLLM2_ENV), out)
    model = config.model
    records = _eval_records(config)
    load_before = os.getloadavg()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = run_method(config, run, records, Path(out) / run["id"])
    wall, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start

    # once on a fresh copy of the base model: the other decoder and the evaluation-set token entropy
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from psft.eval.entropy import mean_token_entropy
    from psft.stages.chain import _demonstration

    rows = records[0] + records[1]
    extra = {}
    if not args.skip_base_checks:
        tok = AutoTokenizer.from_pretrained(model)
        policy = AutoModelForCausalLM.from_pretrained(model).eval()
        for decoder in ("hf", "fast"):
            t = time.perf_counter()
            generation(policy, tok, rows, max_new_tokens=config.max_new_tokens, batch_size=256, checker="math",
                       progress=False, decoder=decoder)  # fmt: skip
            extra[f"generation_{decoder}_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        mean_token_entropy(policy, tok, [d for d in map(_demonstration, rows) if d is not None])
        extra["eval_set_entropy_s"] = round(time.perf_counter() - t, 2)

    evals = len(TIMES["generation"])
    report: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (float32)",
        "config": args.config or "INSTRUCT_DEFAULTS",
        "threads": torch.get_num_threads(),
        "malloc": malloc,
        "setting": run["name"],
        "overrides": run["overrides"],
        "batch": config.training["per_device_train_batch_size"],
        "steps": result["steps"],
        "evaluations": evals,
        "prompts_per_evaluation": len(rows),
        "heldout_texts_per_evaluation": len(records[0]),
        "drift_texts_per_evaluation": len(records[1]),
        "max_new_tokens": config.max_new_tokens,
        "final_check_on_base_model": extra,
        "load_average_before_after": [round(x, 2) for x in load_before + os.getloadavg()],
    }
    # train_s / train_cpu_s exclude the callback's evaluations but include the base drift statistics
    for label, times, total, train in (("wall", TIMES, wall, result["train_s"]),
                                       ("cpu", CPU, cpu_total, result["train_cpu_s"])):  # fmt: skip
        parts = {name: round(sum(v), 2) for name, v in times.items()}
        once = parts.get("drift_base_stats", 0.0) + parts.get("reference_table", 0.0)
        parts["training_steps"] = round(train - once - parts.get("old_policy_pass", 0.0), 2)
        parts["setup_and_other"] = round(total - sum(parts.values()), 2)  # loading, trainer setup, logging
        report[label] = {
            "total_s": round(total, 2),
            "parts_s": parts,
            "share": {k: round(v / total, 3) for k, v in parts.items()},
            "per_call_s": {name: [round(x, 2) for x in v] for name, v in times.items()},
            "per_step_s": round(parts["training_steps"] / max(1, result["steps"]), 2),
            "old_pass_per_step_s": round(parts.get("old_policy_pass", 0.0) / max(1, result["steps"]), 2),
            "per_prompt_generation_s": round(parts["generation"] / max(1, evals * len(rows)), 3),
            "per_text_heldout_s": round(parts.get("heldout_nll", 0.0) / max(1, evals * len(records[0])), 3),
            "per_text_drift_s": round(parts.get("drift", 0.0) / max(1, evals * len(records[1])), 3),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
