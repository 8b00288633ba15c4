"""Wall time of one run of a `psft demo` preset at one torch thread, training and evaluation apart, and the
preset's total extrapolated from it in CPU time (every run costs about the same; PSFT-K8's training about 1.25x
SFT's), which an idle core matches and a busy machine's wall time exceeds.

    OMP_NUM_THREADS=1 python benchmarks/preset_cost.py --preset full [--setting 'sft[learning_rate=0.00025]']

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from psft.core.threads import configure_threads
from psft.experiments.plan import CompareConfig, full_preset
from psft.experiments.runner import _eval_records, run_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["full", "default"], default="full")
    parser.add_argument("--setting", help="setting name to time (default: the first of the plan)")
    args = parser.parse_args()
    configure_threads(1, announce=False)
    config = full_preset() if args.preset == "full" else CompareConfig.for_model()
    plan = config.runs()
    run = next((r for r in plan if r["name"] == args.setting), plan[0]) if args.setting else plan[0]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        result = run_method(config, run, _eval_records(config), Path(tmp) / run["id"], run["id"])
        wall = time.time() - start
    # CPU time of the one thread: what the run costs on an idle core (wall time on a shared machine is longer)
    per_run = result["train_cpu_s"] + result["eval_cpu_s"]
    print(
        json.dumps(
            {
                "preset": args.preset,
                "run": run["id"],
                "evaluations": [e["step"] for e in result["evals"]],
                "train_s": result["train_s"],
                "eval_s": result["eval_s"],
                "train_cpu_s": result["train_cpu_s"],
                "eval_cpu_s": result["eval_cpu_s"],
                "wall_s": round(wall, 1),
                "process_cpu_s": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_utime
                    + resource.getrusage(resource.RUSAGE_SELF).ru_stime,
                    1,
                ),  # fmt: skip
                "runs": len(plan),
                "total_h_one_thread": round(len(plan) * per_run / 3600, 1),
                "total_h_jobs2_on_2_cores": round(len(plan) * per_run / 3600 / 2, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
