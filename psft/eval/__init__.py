"""Evaluation: generation accuracy (avg@n / pass@n), answer checkers, drift from the base, lm-eval bridge.

- `evaluate_generation(model, tokenizer, data, ...)`: decode, check, score per task, save samples (JSONL).
- `get_checker(name)` / `register_checker(name)`: answer checkers ("math" via math-verify, "exact", "regex").
- `compute_reference_stats(base, ...)` then `measure_drift(model, stats_file)`: KL(base || model) on text.
- `EvalCallback(...).attach(trainer)`: the above every N training steps, logged through the trainer.
- `psft.eval.lmeval.run_lm_eval(model, tasks, ...)`: lm-evaluation-harness tasks (extra: ``psft[lmeval]``).
- `psft eval ...` on the command line (`psft.eval.cli`).
"""

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
