"""Per-setting estimates over seeds (mean and 95% interval), each run's final metrics, and the frontier of one
seed: out-of-domain accuracy at in-domain accuracy levels."""

from __future__ import annotations

import math
from typing import Any

from psft.experiments import stats

LEVEL_STEP = 0.05  # in-domain accuracy levels at which frontiers are compared


METRICS = (
    "in_domain",
    "out_of_domain",
    "best_in_domain",
    "heldout_nll",
    "nll",
    "drift_kl",
    "entropy",
    "clip_high",
)


REPS = 1000  # bootstrap replicates


BOOT_SEED = 0  # the bootstrap's own random seed: the report is a deterministic function of the runs


ACCURACY_MARGIN = 0.03  # equivalence margin of accuracy gaps (TOST): +/- 3 points


ENTROPY_MARGIN = 0.05  # equivalence margin of entropy gaps: +/- 0.05 nats


DRIFT_MARGIN = 0.1  # equivalence margin of drift gaps: +/- 0.1 nats per token (KL from the base)


NLL_TARGETS = 6  # matched held-out NLL levels between the base model's and the lowest every seed reaches


def t_quantile(df: int) -> float:
    """t(0.975, df), the two-sided 95% quantile of Student's t (`stats.t_quantile`)."""
    if df < 1:
        raise ValueError("degrees of freedom must be >= 1")
    return stats.t_quantile(0.975, df)


def estimate(values: list[float]) -> dict[str, Any]:
    """`{"n", "mean", "se", "ci95"}` of `values`; `se` and `ci95` are None for fewer than two values."""
    values = [v for v in values if v is not None]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "se": None, "ci95": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "se": None, "ci95": None}
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    half = t_quantile(n - 1) * se
    return {"n": n, "mean": mean, "se": se, "ci95": [mean - half, mean + half]}


def final_metrics(run: dict[str, Any]) -> dict[str, float | None]:
    """The end of one run: last evaluation's accuracies, held-out NLL and drift, last training log's NLL,
    entropy, clip (the prompt-level ones are replaced by bootstrap estimates in `summarize`)."""
    evals = run.get("evals") or [{}]
    last, curve = evals[-1], (run.get("curves") or [{}])[-1]
    best = [e["in_domain"] for e in evals if e.get("in_domain") is not None]
    return {
        "in_domain": last.get("in_domain"),
        "out_of_domain": last.get("out_of_domain"),
        "best_in_domain": max(best) if best else None,
        "heldout_nll": last.get("heldout_nll"),
        "nll": curve.get("nll"),
        "drift_kl": last.get("drift_kl"),
        "entropy": curve.get("entropy"),
        "clip_high": curve.get("clip_ratio/high"),
    }


def group_settings(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting (method x sweep point, the run's `name`): seeds, and an estimate of each final metric."""
    names = list(dict.fromkeys(r["name"] for r in runs))
    groups = []
    for name in names:
        members = [r for r in runs if r["name"] == name]
        finals = [final_metrics(r) for r in members]
        groups.append(
            {
                "name": name,
                "method": members[0]["method"],
                "overrides": members[0]["overrides"],
                "point": members[0].get("point", {}),
                "seeds": [r["seed"] for r in members],
                "metrics": {key: estimate([f[key] for f in finals]) for key in METRICS},
            }
        )
    return groups


def _levels(top: float) -> list[float]:
    return [round(LEVEL_STEP * i, 4) for i in range(1, int(top / LEVEL_STEP + 1e-9) + 1)]


def seed_frontier(runs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Upper-right frontier of every checkpoint of `runs`: (in-domain, best out-of-domain at >= that level)."""
    points = sorted(
        {(e["in_domain"], e["out_of_domain"]) for r in runs for e in r["evals"] if _complete(e)}, reverse=True
    )
    frontier, best = [], -1.0
    for x, y in points:  # from the highest in-domain down, keep points that raise the best out-of-domain
        if y > best:
            frontier.append((x, y))
            best = y
    return frontier[::-1]


def _complete(e: dict[str, Any]) -> bool:
    return e.get("in_domain") is not None and e.get("out_of_domain") is not None


def frontier_at(frontier: list[tuple[float, float]], level: float) -> float | None:
    """Best out-of-domain accuracy among frontier points with in-domain >= `level` (None: never reached)."""
    values = [y for x, y in frontier if x >= level - 1e-9]
    return max(values) if values else None


def _ranges(levels: list[float]) -> str:
    """`[0.05, 0.1, 0.15, 0.3]` -> "5-15%, 30%"."""
    spans, start, prev = [], None, None
    for x in levels:
        if start is None:
            start = prev = x
        elif x - prev > LEVEL_STEP + 1e-9:
            spans.append((start, prev))
            start = x
        prev = x
    if start is not None:
        spans.append((start, prev))
    return ", ".join(f"{100 * a:.0f}%" if a == b else f"{100 * a:.0f}-{100 * b:.0f}%" for a, b in spans)
