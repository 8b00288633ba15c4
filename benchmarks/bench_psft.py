"""PSFT (K optimizer steps per rollout) against SFT through the real `PSFTTrainer`: step time, the no-grad
forward, the floor `1 + (K-1)/K * t_fwd/t_sft`, and peak memory. Prints one JSON object.

Two floors: `floor` takes `t_fwd` from the trainer's own old pass; `physical_floor` from the model's plain no-grad
forward on the same micro-batch (`fwd_modes.plain_forward_pass`), so that the old pass's own overheads count against
PSFT. `ratio_over_physical_floor` is the number to hold to 1.05.

    python benchmarks/bench_psft.py --size medium

Timing runs in this process: one SFT (K = 1) and one PSFT trainer, built from the same model, data and
seed, trained in alternating rounds (`trainer.train()` of whole rollouts each, the first rollout of every
round discarded as warm-up). A step's time is the mean over a whole rollout of the wall time between
optimizer-step ends, so PSFT's old-policy pass in `get_batch_samples` is amortised over its K steps; the
reported time is the median over rollouts. Memory is measured in fresh subprocesses, one per variant.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    SIZES,
    PeakMemory,
    PeakTensorMemory,
    StepTimes,
    add_common_args,
    apply_common_args,
    make_data,
    make_model,
    make_trainer,
    median,
    num_params,
    per_step_over_rollouts,
    spread,
    sync,
)
from fwd_modes import FORWARD_MODES  # noqa: E402


def micro_batch(trainer: Any) -> dict[str, Any]:
    """One training micro-batch as the trainer's dataloader yields it."""
    return next(iter(trainer.get_train_dataloader()))


def time_call(fn: Any, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def noise_met(per_step: dict[str, list[float]], target: float) -> bool:
    """Whether every variant's rollout times are within `target` (relative half inter-quartile range)."""
    return all(len(ts) >= 2 and spread(ts) <= target for ts in per_step.values())


def measure_time(
    size: str,
    batch: int,
    k: int,
    rounds: int,
    rollouts: int,
    out: str,
    target: float = 0.0,
    max_rounds: int = 0,
) -> dict[str, Any]:
    """Interleaved rounds of SFT and PSFT training, plus the standalone no-grad forward in each of its modes:
    `rounds` of them, then more (up to `max_rounds`) until SFT's and PSFT's rollout times are within the noise
    `target`."""
    model = make_model(size)
    steps = rollouts * k
    data = make_data(size, rows=steps * batch)
    trainers = {kind: make_trainer(kind, model, data, batch, steps, k, out) for kind in ("sft", "psft")}
    timers = {kind: StepTimes() for kind in trainers}
    for kind, trainer in trainers.items():
        trainer.add_callback(timers[kind])
    psft = trainers["psft"]
    old_pass_times: list[float] = []
    original_old = psft._log_probs

    def timed_old(*args: Any, **kwargs: Any) -> torch.Tensor:
        start = time.perf_counter()
        result = original_old(*args, **kwargs)
        sync()
        old_pass_times.append(time.perf_counter() - start)
        return result

    psft._log_probs = timed_old  # instance attribute: records the old-policy passes made in training
    mb = micro_batch(psft)
    per_step: dict[str, list[float]] = {kind: [] for kind in trainers}
    # step times by position inside a rollout (first rollout of each round skipped): PSFT pays its old pass at
    # position 1 only, so positions 2..K must match SFT's
    by_position: dict[str, list[list[float]]] = {kind: [[] for _ in range(k)] for kind in trainers}
    fwd: dict[str, list[float]] = {name: [] for name in FORWARD_MODES}
    done = 0
    for r in range(max(rounds, max_rounds)):
        if r >= rounds and noise_met(per_step, target):
            break
        done += 1
        order = ["sft", "psft"] if r % 2 == 0 else ["psft", "sft"]
        for kind in order:
            timers[kind].times = []
            trainers[kind].train()
            per_step[kind] += per_step_over_rollouts(timers[kind].times, k)
            for i, t in enumerate(timers[kind].times[k:]):
                by_position[kind][i % k].append(t)
        names = list(FORWARD_MODES) if r % 2 == 0 else list(reversed(FORWARD_MODES))
        standalone_start = len(old_pass_times)
        for name in names:
            fn = FORWARD_MODES[name]
            fn(psft, mb)  # warm-up
            fwd[name] += time_call(lambda fn=fn: fn(psft, mb), max(k - 1, 1))
        del old_pass_times[standalone_start:]  # the "trainer" mode goes through the wrapper too: not training
    t_sft, t_psft, t_fwd = median(per_step["sft"]), median(per_step["psft"]), median(fwd["trainer"])
    t_plain = median(fwd["plain_forward"])
    ratio = t_psft / t_sft
    floor = 1 + (k - 1) / k * t_fwd / t_sft
    physical_floor = 1 + (k - 1) / k * t_plain / t_sft
    tokens = batch * (SIZES[size].prompt_len + SIZES[size].completion_len)
    position_medians = {kind: [median(ts) for ts in by_position[kind]] for kind in trainers}
    # the same ratio from per-position medians: robust to a slow phase of the machine hitting whole rollouts
    ratio_by_position = sum(position_medians["psft"]) / sum(position_medians["sft"])
    return {
        "params": num_params(model),
        "tokens_per_step": tokens,
        "t_sft": t_sft,
        "t_psft": t_psft,
        "t_fwd": t_fwd,
        "t_old_in_trainer": median(old_pass_times),
        "ratio": ratio,
        "floor": floor,
        "ratio_over_floor": ratio / floor,
        "ratio_by_position": ratio_by_position,
        "ratio_by_position_over_floor": ratio_by_position / floor,
        "t_plain_fwd": t_plain,
        "physical_floor": physical_floor,
        "ratio_over_physical_floor": ratio / physical_floor,
        "ratio_by_position_over_physical_floor": ratio_by_position / physical_floor,
        "position_medians": {kind: [round(t, 4) for t in v] for kind, v in position_medians.items()},
        "noise": {
            "sft": spread(per_step["sft"]),
            "psft": spread(per_step["psft"]),
            "fwd": spread(fwd["trainer"]),
        },
        "rounds_done": done,
        "noise_target": target,
        "noise_met": noise_met(per_step, target),
        "per_rollout": {kind: [round(t, 4) for t in v] for kind, v in per_step.items()},
        "fwd_modes": {name: median(ts) / t_fwd for name, ts in fwd.items()},
        "floor_with_best_fwd": 1 + (k - 1) / k * min(median(ts) for ts in fwd.values()) / t_sft,
    }


def probe(size: str, batch: int, kind: str, k: int, rollouts: int, out: str) -> dict[str, float]:
    """Peak memory of one variant in this (fresh) process: training for `kind` in ("sft", "psft"), or a way to
    compute the old log-probs alone over K - 1 micro-batches: the trainer's pass for "old", the naive full
    logits + log-softmax for "old_full". The old passes also report `tensor_mb`, the peak of the tensors they
    hold at once (`PeakTensorMemory`): RSS sees a transient only when malloc has no cached memory for it.
    "sft_tensors" and "psft_tensors" report only that peak, for the whole of training."""
    model = make_model(size)
    steps = rollouts * k
    data = make_data(size, rows=steps * batch)
    loss = "psft" if kind.startswith(("old", "psft")) else "sft"
    trainer = make_trainer(loss, model, data, batch, steps, k, out)
    del model
    if kind.startswith("old"):
        mb = micro_batch(trainer)
        old_pass = FORWARD_MODES["trainer" if kind == "old" else "full_logits"]
        old_pass(trainer, mb)  # once outside the probes: one-time state (the head's patch, kernel caches)
        with PeakMemory() as mem:
            olds = [old_pass(trainer, mb) for _ in range(k - 1)]
        del olds
        with PeakTensorMemory() as tensors:  # apart: the profiler's own records would show in RSS
            olds = [old_pass(trainer, mb) for _ in range(k - 1)]
        del olds
        return {"base_mb": mem.base, "peak_mb": mem.peak, "added_mb": mem.added, "tensor_mb": tensors.peak}
    if kind.endswith("_tensors"):  # what training holds at once: activations, gradients, optimizer state
        with PeakTensorMemory() as tensors:
            trainer.train()
        return {"tensor_mb": tensors.peak}
    with PeakMemory() as mem:
        trainer.train()
    return {"base_mb": mem.base, "peak_mb": mem.peak, "added_mb": mem.added}


def run_probe(
    size: str, batch: int, kind: str, k: int, rollouts: int, vocab: int | None = None
) -> dict[str, float]:
    """`probe` in a fresh process, so that its peak is its own."""
    cmd = [sys.executable, __file__, "--size", size, "--batch", str(batch), "--k", str(k)]
    cmd += ["--rollouts", str(rollouts)] + (["--vocab", str(vocab)] if vocab else [])
    result = subprocess.run(cmd + ["--probe", kind], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_memory(
    size: str, batch: int, k: int, rollouts: int, vocab: int | None = None, training_tensors: bool = False
) -> dict[str, float]:
    """Peak RSS of SFT and PSFT training, the old pass's memory against the naive pass's, and with
    `training_tensors` the tensors SFT and PSFT training hold at once (two more probes, slow under the profiler)."""
    sft, psft, old, full = (
        run_probe(size, batch, kind, k, rollouts, vocab) for kind in ("sft", "psft", "old", "old_full")
    )
    s = SIZES[size]
    logits_mb = batch * (s.prompt_len + s.completion_len) * s.vocab * 4 / 2**20
    tensors = {}
    if training_tensors:
        sft_t, psft_t = (
            run_probe(size, batch, kind, k, rollouts, vocab) for kind in ("sft_tensors", "psft_tensors")
        )
        tensors = {
            "sft_tensor_mb": sft_t["tensor_mb"],
            "psft_tensor_mb": psft_t["tensor_mb"],
            "tensor_peak_ratio": psft_t["tensor_mb"] / sft_t["tensor_mb"],
        }
    return {
        **tensors,
        "sft_peak_mb": sft["peak_mb"],
        "psft_peak_mb": psft["peak_mb"],
        "peak_ratio": psft["peak_mb"] / sft["peak_mb"],
        "sft_added_mb": sft["added_mb"],
        "psft_added_mb": psft["added_mb"],
        "added_ratio": psft["added_mb"] / max(sft["added_mb"], 1e-9),
        "old_pass_added_mb": old["added_mb"],
        "old_pass_tensor_mb": old["tensor_mb"],
        "full_logits_pass_tensor_mb": full["tensor_mb"],
        "full_logits_mb": logits_mb,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--k", type=int, default=8, help="PSFT mini-batches per rollout")
    parser.add_argument("--rounds", type=int, default=4, help="alternating SFT/PSFT rounds (at least)")
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=0,
        help="keep adding rounds, up to this many, until the SFT and PSFT noise is within --noise-target",
    )
    parser.add_argument(
        "--noise-target",
        type=float,
        default=0.02,
        help="relative noise of the step times to reach and report",
    )
    parser.add_argument("--rollouts", type=int, default=3, help="rollouts per round (the first is warm-up)")
    parser.add_argument("--vocab", type=int, help="override the size's vocabulary (not for tiny)")
    parser.add_argument("--smoke", action="store_true", help="tiny size, one short round: checks it runs")
    parser.add_argument(
        "--memory-only", action="store_true", help="only the peak-memory probes, no timing rounds"
    )
    parser.add_argument(
        "--training-tensors",
        action="store_true",
        help="also count the tensors SFT and PSFT training hold at once (two more probes, slow under the profiler)",
    )
    probes = ["sft", "psft", "old", "old_full", "sft_tensors", "psft_tensors"]
    parser.add_argument("--probe", choices=probes, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.batch, args.k, args.rounds, args.rollouts, args.vocab = "tiny", 4, 4, 1, 2, None
        args.max_rounds = 2  # one more round only if the first is noisy: checks the adaptive path runs
    malloc = apply_common_args(args)
    if args.vocab:
        if args.size == "tiny":
            parser.error("--vocab: the tiny model's vocabulary is its tokenizer's")
        SIZES[args.size] = replace(SIZES[args.size], vocab=args.vocab)
    with tempfile.TemporaryDirectory() as out:
        if args.probe:
            report = probe(args.size, args.batch, args.probe, args.k, args.rollouts, out)
        else:
            report = {
                "size": args.size,
                "k": args.k,
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "threads": torch.get_num_threads(),
                "malloc": malloc,
                "rounds": args.rounds,
                "batch": args.batch,
                "vocab": SIZES[args.size].vocab,
                **(
                    {}
                    if args.memory_only
                    else measure_time(
                        args.size,
                        args.batch,
                        args.k,
                        args.rounds,
                        args.rollouts,
                        out,
                        target=args.noise_target,
                        max_rounds=args.max_rounds,
                    )
                ),
                "memory": measure_memory(
                    args.size, args.batch, args.k, args.rollouts, args.vocab, args.training_tensors
                ),
            }
    print(json.dumps(report, indent=None if args.probe else 2))
    return report


if __name__ == "__main__":
    main()
