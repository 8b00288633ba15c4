"""What activation checkpointing costs a CPU study: SFT optimizer steps through the real `PSFTTrainer` with it on
(TRL's default) and off, same model, data and seed, in alternating rounds in one process. Prints one JSON object:
the median step time of each, their ratio (off / on) and each one's peak RSS growth.

On a GPU checkpointing trades compute for memory that a large model needs; a 135M model on a CPU with 24 GB has
memory to spare, so the recomputed forward is pure cost there. Sizes as in `_common` (`--size smollm2` needs
PSFT_BENCH_SMOLLM2=DIR); `--length` sets the tokens per sequence (half prompt, half completion).

    PSFT_BENCH_SMOLLM2=models/smollm2 python benchmarks/bench_checkpointing.py --size smollm2 --batch 8 --length 160
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    StepTimes,
    add_common_args,
    apply_common_args,
    make_data,
    make_model,
    make_trainer,
    median,
    spread,
)
from datasets import Dataset  # noqa: E402


def one_round(
    model, data: Dataset, batch: int, steps: int, checkpointing: bool, out: str
) -> tuple[list[float], int]:
    """`steps` SFT steps with checkpointing on or off: step times (the first dropped) and RSS growth."""
    trainer = make_trainer("sft", model, data, batch, steps, 1, out, activation_checkpointing=checkpointing)
    times = StepTimes()
    trainer.add_callback(times)
    rss = psutil.Process().memory_info().rss
    trainer.train()
    return times.times[1:], psutil.Process().memory_info().rss - rss


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence")
    parser.add_argument(
        "--steps", type=int, default=4, help="optimizer steps per round (the first is warm-up)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each variant")
    parser.add_argument("--smoke", action="store_true", help="seconds: tiny, 2 rounds of 2 steps")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.steps, args.rounds, args.length = "tiny", 2, 2, 16
    malloc = apply_common_args(args)
    model = make_model(args.size)
    data = make_data(args.size, args.batch * args.steps, length=args.length)
    times: dict[str, list[float]] = {"on": [], "off": []}
    rss: dict[str, int] = {"on": 0, "off": 0}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.rounds):
            for name, flag in (("on", True), ("off", False)):
                step_times, grown = one_round(model, data, args.batch, args.steps, flag, out)
                times[name] += step_times
                rss[name] = max(rss[name], grown)
    report = {
        "bench": "checkpointing",
        "size": args.size,
        "batch": args.batch,
        "length": args.length,
        "threads": args.threads,
        "malloc": malloc,
        "steps_timed": {k: len(v) for k, v in times.items()},
        "step_s": {k: round(median(v), 4) for k, v in times.items()},
        "noise": {k: round(spread(v), 4) for k, v in times.items()},
        "off_over_on": round(median(times["off"]) / median(times["on"]), 4),
        "rss_growth_mib": {k: round(v / 2**20, 1) for k, v in rss.items()},
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
