"""`psft compare` / `psft demo`: plan, runner, result store, report, statistics, plots, presets.

The library side of `psft compare`: build a `CompareConfig`, `compare(config)` runs it and writes the
report; `load_report` / `write_report` rebuild it from the runs on disk."""

from psft.experiments.plan import CompareConfig, full_preset, quick
from psft.experiments.presets import INSTRUCT_DEFAULTS
from psft.experiments.report import load_report, print_table, write_report
from psft.experiments.runner import compare, run_method

__all__ = [
    "CompareConfig",
    "INSTRUCT_DEFAULTS",
    "compare",
    "full_preset",
    "load_report",
    "print_table",
    "quick",
    "run_method",
    "write_report",
]
