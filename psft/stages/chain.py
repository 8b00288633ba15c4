"""What comes after fine-tuning (RL, DPO): the same stage run from several checkpoints, each evaluated before
and after it, so that the starts can be compared (the paper's SFT->RL vs PSFT->RL and SFT->DPO vs PSFT->DPO).

`run_chain` is the one home of the chain: `psft.stages.rl.run_rl_stage` and `psft.stages.dpo.run_dpo_stage` give it their
training function and settings. Each evaluation is greedy accuracy (avg@1, per task and overall) on an
in-domain and an out-of-domain set, the token entropy on their reference completions, the drift from the base
model on the out-of-domain texts (with `base_model`), and the stage's own metrics (a `probe`, e.g. DPO's
preference accuracy). The report goes to JSON after every checkpoint and `format_report` makes the table.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psft.data.models import load_model, load_tokenizer
from psft.data.sources import builtin_rows, is_builtin
from psft.errors import UserError
from psft.eval.entropy import mean_token_entropy
from psft.eval.generate import evaluate_generation
from psft.eval.records import load_rows
from psft.stages.rewards import completion_text

# probe(model, tokenizer, checkpoint name, "before" | "after") -> the stage's own metrics
Probe = Callable[[Any, Any, str, str], dict[str, Any]]


@dataclass
class StageEval:
    """How each start is evaluated before and after the stage."""

    in_domain: str | list[str] = "psft/arith"  # data names (test split): psft/<task>, files or hub datasets
    out_of_domain: str | list[str] = "psft/general"  # psft/general = every general task of the suite
    per_task: int = 50  # test prompts per task in each set
    max_new_tokens: int = 64  # greedy decoding length for accuracy
    batch_size: int = 32  # prompts decoded per batch
    default_checker: str = "math"  # checker of rows without a `checker` field
    base_model: str | None = None  # drift is measured from it on the out-of-domain texts; None: no drift


def load_data_rows(name: str, split: str = "test", per_task: int | None = None) -> list[dict[str, Any]]:
    """Rows of `psft/<task>` (`psft/general`: every general task), a local file or a hub dataset; with
    `per_task`, the first `per_task` rows of each `task`."""
    rows = builtin_rows(name, split, "prompt_completion") if is_builtin(name) else load_rows(name, split)
    if per_task is None:
        return rows
    kept, seen = [], Counter()
    for row in rows:
        task = str(row.get("task") or "default")
        if seen[task] < per_task:
            kept.append(row)
            seen[task] += 1
    return kept


def _demonstration(row: dict[str, Any]) -> tuple[Any, str] | None:
    """(prompt, reference completion text) of a row, or None if it has no completion."""
    if row.get("messages"):
        messages = row["messages"]
        return (
            (messages[:-1], completion_text(messages[-1:]))
            if messages[-1].get("role") == "assistant"
            else None
        )
    if row.get("prompt") is not None and row.get("completion") is not None:
        return row["prompt"], completion_text(row["completion"])
    return None


def evaluate_model(
    model: Any,
    tokenizer: Any,
    sets: dict[str, list[dict[str, Any]]],
    *,
    default_checker: str = "math",
    max_new_tokens: int = 64,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Per evaluation set: greedy accuracy (avg@1, overall and per task) and the mean token entropy on the
    set's reference completions (`psft.eval.entropy`; None for sets without completions)."""
    out: dict[str, Any] = {}
    for name, rows in sets.items():
        result = evaluate_generation(
            model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=batch_size,
            checker=default_checker, progress=False,
        )  # fmt: skip
        pairs = [d for d in map(_demonstration, rows) if d is not None]
        summary = result.summary()
        out[name] = {
            "accuracy": summary["overall"]["avg"],
            "accuracy_stderr": summary["overall"]["avg_stderr"],
            "num_prompts": summary["overall"]["num_prompts"],
            "tasks": {t: s["avg"] for t, s in sorted(summary["tasks"].items())},
            "entropy": mean_token_entropy(model, tokenizer, pairs) if pairs else None,
        }
    return out


def _names(names: str | list[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def _base_drift_stats(evaluation: StageEval, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """The base model's statistics on the out-of-domain texts (`psft.eval.drift`), or None without a base."""
    if evaluation.base_model is None:
        return None
    from psft.eval.drift import compute_reference_stats
    from psft.eval.records import render_text

    tokenizer = load_tokenizer(evaluation.base_model)
    model = load_model(evaluation.base_model)
    return compute_reference_stats(model, tokenizer, [render_text(tokenizer, r) for r in rows], path)


def _drift(model: Any, stats: Path | None) -> dict[str, float] | None:
    from psft.eval.drift import measure_drift

    if stats is None:
        return None
    result = measure_drift(model, stats)
    return {"kl": result.kl, "logprob_change": result.logprob_change}


def run_chain(
    checkpoints: dict[str, str],
    stage: str,
    train: Callable[[str, str], Any],
    output_dir: str | Path,
    settings: dict[str, Any],
    evaluation: StageEval,
    summarize: Callable[[list[dict[str, Any]], float], dict[str, Any]],
    probe: Probe | None = None,
    report_path: str | Path | None = None,
) -> dict[str, Any]:
    """The same `stage` from each named checkpoint: `train(checkpoint, output_dir/NAME)` trains, saves and
    returns the trainer; before and after it the model is evaluated (`evaluation`, plus `probe`'s metrics).

    The report has `stage`, the stage's `settings` (under the stage's name), `eval` and, per checkpoint,
    `before_<stage>`, `after_<stage>`, `<stage>_train` (`summarize(log_history, seconds)`) and
    `<stage>_output_dir`; it is written as JSON to `report_path` (default `output_dir/<stage>_report.json`)
    after each checkpoint, so a crash loses only the checkpoint in progress."""
    if not checkpoints:
        raise UserError(f"no checkpoints to run {stage} from")
    sets = {
        group: [row for name in _names(names) for row in load_data_rows(name, "test", evaluation.per_task)]
        for group, names in (("in_domain", evaluation.in_domain), ("out_of_domain", evaluation.out_of_domain))
    }
    output_dir = Path(output_dir)
    path = Path(report_path or output_dir / f"{stage}_report.json")
    stats = _base_drift_stats(evaluation, sets["out_of_domain"], output_dir / "base_drift_stats.safetensors")
    report: dict[str, Any] = {
        "stage": stage,
        stage: settings,
        "eval": {
            "in_domain": evaluation.in_domain, "out_of_domain": evaluation.out_of_domain,
            "per_task": evaluation.per_task, "max_new_tokens": evaluation.max_new_tokens, "decoding": "greedy",
            "default_checker": evaluation.default_checker, "base_model": evaluation.base_model,
        },
        "methods": {},
    }  # fmt: skip
    generation = dict(
        default_checker=evaluation.default_checker,
        max_new_tokens=evaluation.max_new_tokens,
        batch_size=evaluation.batch_size,
    )

    def measure(model: Any, tokenizer: Any, name: str, phase: str) -> dict[str, Any]:
        print(f"{stage} chain: evaluating {name} {phase} {stage}", file=sys.stderr, flush=True)
        result = evaluate_model(model, tokenizer, sets, **generation)
        result["drift"] = _drift(model, stats)
        if probe is not None:
            result |= probe(model, tokenizer, name, phase)
        return result

    for name, checkpoint in checkpoints.items():
        model = load_model(checkpoint)
        before = measure(model, load_tokenizer(checkpoint), name, "before")
        del model
        stage_dir = str(output_dir / name)
        print(
            f"{stage} chain: {stage} from {name} ({checkpoint}) into {stage_dir}", file=sys.stderr, flush=True
        )
        start = time.perf_counter()
        trainer = train(checkpoint, stage_dir)
        seconds = time.perf_counter() - start
        policy = trainer.accelerator.unwrap_model(trainer.model)
        after = measure(policy, trainer.processing_class, name, "after")
        report["methods"][name] = {
            "checkpoint": checkpoint, f"{stage}_output_dir": stage_dir, f"before_{stage}": before,
            f"after_{stage}": after, f"{stage}_train": summarize(trainer.state.log_history, seconds),
        }  # fmt: skip
        del trainer, policy
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table: per start, before and after the stage, accuracy, entropy, drift KL and the stage's
    preference accuracy and reward margin where it measured them."""
    stage = report.get("stage", "rl")
    header = f"{'method':<10} {'stage':<11} {'in-dom acc':>10} {'ood acc':>8} {'in-dom H':>9} {'ood H':>7}"
    header += f" {'drift KL':>9} {'pref acc':>9} {'margin':>8}"
    lines = [header]
    for name, result in report["methods"].items():
        for phase in (f"before_{stage}", f"after_{stage}"):
            m = result[phase]
            drift, pref = m.get("drift") or {}, m.get("preference") or {}
            cells = [m["in_domain"]["accuracy"], m["out_of_domain"]["accuracy"]]
            cells += [m["in_domain"]["entropy"], m["out_of_domain"]["entropy"], drift.get("kl")]
            cells += [pref.get("accuracy"), pref.get("reward_margin")]
            t = [_cell(c) for c in cells]
            lines.append(
                f"{name:<10} {phase:<11} {t[0]:>10} {t[1]:>8} {t[2]:>9} {t[3]:>7} {t[4]:>9} {t[5]:>9} {t[6]:>8}"
            )
    return "\n".join(lines)


