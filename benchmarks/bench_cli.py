"""Wall time of the `psft` commands a new user types first: `psft --help`, `psft --version`, `psft train --help`.

Each command runs `--runs` times in a fresh Python process (`python -m psft.cli ...`, as the console script
does), after one unmeasured warm-up run that also fills the OS file cache; the median is reported. `train --help`
is measured twice: from a fresh help spec (the shipped one in psft/assets/help, or the user cache: the fast
path), and with the spec ignored (`--cold`: an empty cache directory and no shipped spec), which builds TRL's
parser and imports torch: the cost the spec avoids. Prints JSON (seconds; `cold_over_fast` is the ratio).

    python benchmarks/bench_cli.py [--runs 5] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "help": ["--help"],
    "version": ["--version"],
    "train_help": ["train", "--help"],
    "rl_help": ["rl", "--help"],
    "eval_help": ["eval", "--help"],
}

# run by the cold measurement: psft.cli.main with no shipped spec to read (the user cache is an empty folder)
COLD = "import sys, psft.cli.help as h, pathlib; h.SHIPPED = pathlib.Path('/nonexistent'); import psft.cli; sys.exit(psft.cli.main(sys.argv[1:]))"


def wall_time(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_time(argv: list[str], runs: int, env: dict[str, str]) -> float:
    wall_time(argv, env)  # warm-up: file cache, and the help spec of the user cache when it was stale
    return statistics.median(wall_time(argv, env) for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per command (median)")
    parser.add_argument("--smoke", action="store_true", help="one run each, for the test suite")
    args = parser.parse_args()
    runs = 1 if args.smoke else args.runs
    env = dict(os.environ)
    report: dict[str, object] = {"runs": runs, "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as cache:
        env["XDG_CACHE_HOME"] = os.path.join(
            cache, "fast"
        )  # filled by the warm-up if the shipped spec is stale
        for name, command in COMMANDS.items():
            report[name] = round(median_time([sys.executable, "-m", "psft.cli", *command], runs, env), 3)
        cold_env = {**env, "XDG_CACHE_HOME": os.path.join(cache, "never-written")}
        cold = [sys.executable, "-c", COLD, "train", "--help"]
        # every cold run must build the parser: a fresh, empty cache directory per run
        times = []
        for i in range(runs + 1):
            cold_env["XDG_CACHE_HOME"] = os.path.join(cache, f"cold-{i}")
            times.append(wall_time(cold, cold_env))
        report["train_help_cold"] = round(statistics.median(times[1:]), 3)
    from psft.cli.help import SHIPPED, _load, is_fresh

    report["shipped_spec_fresh"] = bool((spec := _load(SHIPPED / "train.json")) and is_fresh(spec))
    report["cold_over_fast"] = round(report["train_help_cold"] / report["train_help"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
