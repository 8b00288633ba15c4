"""The text of a report's estimates: cells, gaps, p-values, claims, and the tables that report.md, the terminal
and the docs' generated blocks (`docs/gen_tables.py`) share, so that each is written once."""

from __future__ import annotations

import statistics
from typing import Any

# (metric key, column title, scale): accuracies in percent, the rest as they are
COLUMNS = (
    ("in_domain", "in-domain %", 100),
    ("best_in_domain", "best in-domain %", 100),
    ("out_of_domain", "out-of-domain %", 100),
    ("heldout_nll", "held-out NLL", 1),
    ("nll", "train NLL", 1),
    ("drift_kl", "drift KL", 1),
    ("entropy", "entropy", 1),
    ("clip_high", "clip high %", 100),
)
COLUMN_HELP = (
    "Each cell: mean over seeds [95% interval]. Accuracies and held-out NLL: bootstrap interval over seeds and "
    "prompts (one seed: over prompts alone); the other columns: Student-t over seeds, cut at 0 (every column "
    "is non-negative) and at 100% for shares (one seed: the value alone). in-domain %: greedy accuracy "
    "on the in-domain test prompts at the last evaluation; best in-domain %: the highest over the run's "
    "evaluations; out-of-domain %: mean accuracy over the out-of-domain prompts at the last evaluation; held-out "
    "NLL: negative log-likelihood per token (nats) of the in-domain test demonstrations at the last evaluation; "
    "train NLL: "
    "negative log-likelihood per demonstration token (nats) on the last logged training steps; drift KL: "
    "KL(base || model) per token (nats) on the out-of-domain prompts and reference answers, at the last "
    "evaluation; entropy: mean predictive entropy (nats) on training tokens, last logged steps; clip high %: "
    "share of loss tokens with ratio > 1 + epsilon_high at the last logged steps (objectives with an old policy)."
)


def format_estimate(est: dict[str, Any], scale: float = 1, digits: int | None = None) -> str:
    """`72.0 [65.1, 78.9]`; one value: `72.0`; none: `-`. For the level metrics of the tables, all non-negative
    (accuracies and shares, NLL, KL, entropy): a t-interval over two or three seeds can pass 0 (or 100% for a
    share), the quantity cannot, so the interval is cut there."""
    if est.get("mean") is None:
        return "-"
    digits = (1 if scale == 100 else 3) if digits is None else digits
    text = f"{scale * est['mean']:.{digits}f}"
    if est.get("ci95"):
        low, high = (scale * v for v in est["ci95"])
        low = max(low, 0.0)
        if scale == 100:
            high = min(high, 100.0)
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def signed(est: dict[str, Any], scale: float = 100, digits: int = 1) -> str:
    """`+4.2 [+1.0, +7.5]` of an estimate with a signed mean."""
    if est.get("mean") is None:
        return "-"
    text = f"{scale * est['mean']:+.{digits}f}"
    if est.get("ci95"):
        low, high = (scale * v for v in est["ci95"])
        text += f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    return text


def p_text(value: float | None) -> str:
    """A p-value as the report prints it: `<0.001`, `0.041`, or `-`."""
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def format_claim(claim: dict[str, Any]) -> str:
    """One line: the claim, its effect with interval, the adjusted test and whether it holds."""
    unit = "points" if claim["unit"] == "points" else claim["unit"]
    digits = 1 if claim["scale"] == 100 else 3
    return (
        f"{claim['claim']}: {signed(claim, claim['scale'], digits)} {unit} ({claim['over']}); Holm-adjusted p "
        f"{p_text(claim.get('p_holm'))}: {claim['holds']}"
    )


def tasks_table(summary: dict[str, Any]) -> list[str]:
    """The per-set table's lines: one column per evaluation set (its group named), one row for the base and per
    setting; none without per-set results."""
    per_task = summary.get("per_task") or {}
    tasks = per_task.get("tasks") or {}
    if not tasks:
        return []
    seeds = {g["name"]: len(g["seeds"]) for g in summary["groups"]}
    titles = [f"{t} ({group.replace('_', '-')}) %" if group else f"{t} %" for t, group in tasks.items()]
    lines = ["| setting | seeds | " + " | ".join(titles) + " |", "|---|---|" + "---|" * len(tasks)]
    rows = ([("base (step 0)", "-", per_task["base"])] if per_task.get("base") else []) + [
        (name, str(seeds.get(name, "-")), cells) for name, cells in per_task["settings"].items()
    ]
    for name, n, cells in rows:
        lines.append(
            f"| {name} | {n} | " + " | ".join(format_estimate(cells.get(t, {}), 100) for t in tasks) + " |"
        )
    return lines


def cost_table(runs: list[dict[str, Any]]) -> list[str]:
    """The cost table's lines: per method, training, evaluation and whole-run minutes (wall and CPU, median and
    range over its runs), and a row for all runs with the summed hours; a run without CPU times shows "-"."""

    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        lo, mid, hi = (v / 60 for v in (min(values), statistics.median(values), max(values)))
        d = 1 if hi < 10 else 0  # tenths for short runs
        return f"{mid:.{d}f}" if len(values) == 1 else f"{mid:.{d}f} ({lo:.{d}f}-{hi:.{d}f})"

    def times(group: list[dict[str, Any]], *keys: str) -> list[float]:
        return [sum(r[k] for k in keys) for r in group if all(r.get(k) is not None for k in keys)]

    columns = (("train_s",), ("train_cpu_s",), ("eval_s",), ("eval_cpu_s",), ("train_s", "eval_s"),
               ("train_cpu_s", "eval_cpu_s"))  # fmt: skip
    lines = [
        "| method | runs | training, wall | training, CPU | evaluation, wall | evaluation, CPU | run, wall | run, CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in runs):
        group = [r for r in runs if r["method"] == method]
        lines.append(
            f"| {method} | {len(group)} | " + " | ".join(cell(times(group, *k)) for k in columns) + " |"
        )
    totals = [times(runs, "train_s", "eval_s"), times(runs, "train_cpu_s", "eval_cpu_s")]
    wall, cpu = (f"{sum(t) / 3600:.1f} h" if len(t) == len(runs) else "-" for t in totals)
    lines.append(f"| all | {len(runs)} | | | | | {wall} | {cpu} |")
    return lines


def verdict_cell(t: dict[str, Any], scale: float = 100, digits: int = 1) -> str:
    """`+4.2 [+1.0, +7.5] above`: a signed gap and its verdict."""
    return f"{signed(t, scale, digits)} {t.get('verdict', '')}".strip()


def drift_lines(summary: dict[str, Any]) -> list[str]:
    """One line per method: its final drift minus the reference's, mean over the equal-learning-rate pairs."""
    return [
        f"- {d['method']}'s final drift from the base minus {d['reference']}'s: {signed(d, 1, 3)} nats per token "
        f"(mean over {d['pairs']} equal-learning-rate pair(s), {len(d['seeds'])} seed(s)); "
        f"Holm-adjusted p {p_text(d.get('p_holm'))}: {d.get('verdict', 'not resolved')}"
        for d in summary.get("drift") or []
    ]


def pct(value: float | None) -> str:
    """`72.0%`, or `-`."""
    return "-" if value is None else f"{100 * value:.1f}%"
