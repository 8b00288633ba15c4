"""Our `loss_type="sft"` (PSFTTrainer, K = 1) against TRL's own `SFTTrainer`: training tokens per second on
the same model initialisation, data and batch. Prints one JSON object.

    python benchmarks/bench_vs_trl.py --size medium
    PSFT_BENCH_SMOLLM2=DIR python benchmarks/bench_vs_trl.py --size smollm2   # SmolLM2-135M-Instruct (psft convert)

Both trainers live in this process and train in alternating rounds (the order flips every round), so slow
phases of a shared machine hit both. Each round's first steps are warm-up; the step time is the median over
the remaining optimizer steps of all rounds (wall time between optimizer-step ends).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    SIZES,
    StepTimes,
    add_common_args,
    apply_common_args,
    make_data,
    make_model,
    make_trainer,
    median,
    num_params,
    spread,
)

KINDS = {"ours": "sft", "trl": "trl"}  # report name -> `make_trainer` kind


def measure(size: str, batch: int, rounds: int, steps: int, warmup: int, out: str) -> dict[str, Any]:
    """Alternating rounds of `steps` optimizer steps for each trainer; per-step times after `warmup`."""
    model = make_model(size)
    data = make_data(size, rows=steps * batch)
    trainers = {kind: make_trainer(KINDS[kind], model, data, batch, steps, 1, out) for kind in KINDS}
    timers = {kind: StepTimes() for kind in trainers}
    for kind, trainer in trainers.items():
        trainer.add_callback(timers[kind])
    times: dict[str, list[float]] = {kind: [] for kind in trainers}
    ratios = []  # per round: a paired estimate, less sensitive to slow drifts of the machine
    for r in range(rounds):
        order = ["ours", "trl"] if r % 2 == 0 else ["trl", "ours"]
        for kind in order:
            timers[kind].times = []
            trainers[kind].train()
            times[kind] += timers[kind].times[warmup:]
        ratios.append(median(times["trl"][-(steps - warmup) :]) / median(times["ours"][-(steps - warmup) :]))
    tokens = batch * (SIZES[size].prompt_len + SIZES[size].completion_len)
    t_ours, t_trl = median(times["ours"]), median(times["trl"])
    return {
        "params": num_params(model),
        "tokens_per_step": tokens,
        "t_ours": t_ours,
        "t_trl": t_trl,
        "tokens_per_s_ours": tokens / t_ours,
        "tokens_per_s_trl": tokens / t_trl,
        "ratio": t_trl / t_ours,
        "ratio_per_round": ratios,
        "noise": {kind: spread(ts) for kind, ts in times.items()},
        "samples": {kind: len(ts) for kind, ts in times.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="steps discarded at the start of each round")
    parser.add_argument("--smoke", action="store_true", help="tiny size, two short rounds: checks it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.batch, args.rounds, args.steps, args.warmup = "tiny", 4, 2, 4, 1
    malloc = apply_common_args(args)
    with tempfile.TemporaryDirectory() as out:
        report = {
            "size": args.size,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "threads": torch.get_num_threads(),
            "malloc": malloc,
            "batch": args.batch,
            "rounds": args.rounds,
            **measure(args.size, args.batch, args.rounds, args.steps, args.warmup, out),
        }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
