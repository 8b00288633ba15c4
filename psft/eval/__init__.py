"""Evaluation: generation accuracy (avg@n / pass@n), answer checkers, drift from the base, lm-eval bridge.

- `evaluate_generation(model, tokenizer, data, ...)`: decode, check, score per task, save samples (JSONL).
- `get_checker(name)` / `register_checker(name)`: answer checkers ("math" via math-verify, "exact", "regex").
- `compute_reference_stats(base, ...)` then `measure_drift(model, stats_file)`: KL(base || model) on text.
- `EvalCallback(...).attach(trainer)`: the above every N training steps, logged through the trainer.
- `psft.eval.lmeval.run_lm_eval(model, tasks, ...)`: lm-evaluation-harness tasks (extra: ``psft[lmeval]``).
- `psft eval ...` on the command line (`psft.cli.eval`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it; loaded on first use, so that `psft eval --help` (psft.cli.eval) does not
# import torch and transformers
_EXPORTS = {
    "EvalCallback": "psft.eval.callback",
    "Verdict": "psft.eval.checkers",
    "get_checker": "psft.eval.checkers",
    "list_checkers": "psft.eval.checkers",
    "register_checker": "psft.eval.checkers",
    "DriftResult": "psft.eval.drift",
    "compute_reference_stats": "psft.eval.drift",
    "measure_drift": "psft.eval.drift",
    "GenerationResult": "psft.eval.generate",
    "TaskScore": "psft.eval.generate",
    "evaluate_generation": "psft.eval.generate",
    "generate": "psft.eval.generate",
    "pass_at_k": "psft.eval.generate",
    "EvalRecord": "psft.eval.records",
    "load_records": "psft.eval.records",
}

if TYPE_CHECKING:
    from psft.eval.callback import EvalCallback
    from psft.eval.checkers import Verdict, get_checker, list_checkers, register_checker
    from psft.eval.drift import DriftResult, compute_reference_stats, measure_drift
    from psft.eval.generate import GenerationResult, TaskScore, evaluate_generation, generate, pass_at_k
    from psft.eval.records import EvalRecord, load_records

__all__ = [
    "DriftResult",
    "EvalCallback",
    "EvalRecord",
    "GenerationResult",
    "TaskScore",
    "Verdict",
    "compute_reference_stats",
    "evaluate_generation",
    "generate",
    "get_checker",
    "list_checkers",
    "load_records",
    "measure_drift",
    "pass_at_k",
    "register_checker",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'psft.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
