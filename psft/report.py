"""`report.md` of a `psft compare` run: what ran, final metrics with intervals (columns defined), the frontier
verdicts, the matched-NLL and equal-settings views, and the plots with how to read them."""

from __future__ import annotations

from typing import Any

# (metric key, column title, scale): accuracies in percent, the rest as they are
COLUMNS = (
    ("in_domain", "in-domain %", 100),
    ("best_in_domain", "best in-domain %", 100),
    ("out_of_domain", "out-of-domain %", 100),
    ("nll", "train NLL", 1),
    ("drift_kl", "drift KL", 1),
    ("entropy", "entropy", 1),
    ("clip_high", "clip high %", 100),
)
COLUMN_HELP = (
    "Each cell: mean over seeds [95% Student-t interval, cut at 0% and 100% for shares] (one seed: the value alone). in-domain %: greedy accuracy "
    "on the in-domain test prompts at the last evaluation; best in-domain %: the highest over the run's "
    "evaluations; out-of-domain %: mean accuracy over the out-of-domain tasks at the last evaluation; train NLL: "
    "negative log-likelihood per demonstration token (nats) on the last logged training steps; drift KL: "
    "KL(base || model) per token (nats) on the out-of-domain prompts and reference answers, at the last "
    "evaluation; entropy: mean predictive entropy (nats) on training tokens, last logged steps; clip high %: "
    "share of loss tokens with ratio > 1 + epsilon_high at the last logged steps (objectives with an old policy)."
)
PLOT_CAPTIONS = {
    "frontier.png": "Each method's frontier: at each in-domain accuracy (x), the best out-of-domain accuracy (y) of "
    "any of its checkpoints (every learning rate, every evaluation) reaching at least that in-domain level; thick "
    "line = mean over seeds, band = 95% t-interval (levels every seed reached), thin lines = single seeds. Higher "
    "is better: a curve above another keeps more general skill at the same in-domain progress.",
    "pareto.png": "Every evaluated checkpoint of every run: x in-domain accuracy, y out-of-domain accuracy; one line "
    "per run from the base model (star, step 0) to its last evaluation (labelled with its step). Up-right is better.",
    "entropy.png": "Mean predictive entropy (nats per token) on the training batches over optimizer steps; line = "
    "mean over seeds, band = 95% interval. A collapse towards 0 means the model became certain of its outputs.",
    "clip_ratio.png": "Share of loss tokens whose ratio to the old policy exceeds 1 + epsilon_high (they get no "
    "gradient) over optimizer steps, for objectives with an old policy (PSFT); line = mean over seeds, band = 95% "
    "interval.",
    "drift.png": "KL(base || model) per token (nats) on the out-of-domain prompts with their reference answers, at "
    "each evaluation: how far the model moved from the base on text it should not have changed.",
}


def format_estimate(est: dict[str, Any], scale: float = 1, digits: int | None = None) -> str:
    """`72.0 [65.1, 78.9]`; one value: `72.0`; none: `-`."""
    if est.get("mean") is None:
        return "-"
    digits = (1 if scale == 100 else 3) if digits is None else digits
    text = f"{scale * est['mean']:.{digits}f}"
    if est.get("ci95"):
        low, high = (scale * v for v in est["ci95"])
        if scale == 100:  # a share: the t-interval can pass 0% or 100%, the quantity cannot
            low, high = max(low, 0.0), min(high, 100.0)
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _gap(est: dict[str, Any], scale: float = 100) -> str:
    if est.get("mean") is None:
        return "-"
    text = f"{scale * est['mean']:+.1f}"
    if est.get("ci95"):
        low, high = (scale * v for v in est["ci95"])
        text += f" [{low:+.1f}, {high:+.1f}]"
    return text


def render_markdown(report: dict[str, Any], plots: list[str]) -> str:
    """The whole report as Markdown."""
    config, summary = report["config"], report["summary"]
    lines = [
        "# psft compare report",
        "",
        f"{report['finished']} of {report['planned']} planned runs finished "
        f"(settings x seeds {config['seeds']}); model `{config['model']}`, training data `{config['train_data']}`, "
        f"shared training settings `{config['training']}`.",
    ]
    runs = report["runs"]
    if runs:
        train = sum(r.get("train_s", 0) for r in runs) / len(runs)
        evaluation = sum(r.get("eval_s", 0) for r in runs) / len(runs)
        lines += [
            "",
            f"Wall time per run: {train:.0f} s training and {evaluation:.0f} s evaluation on average.",
        ]
    if report["missing"]:
        lines += ["", f"Not finished (not in any number below): {', '.join(report['missing'])}."]
    lines += ["", "## Final metrics per setting", "", COLUMN_HELP, ""]
    lines.append("| setting | seeds | " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    lines.append("|---|---|" + "---|" * len(COLUMNS))
    for g in summary["groups"]:
        cells = [format_estimate(g["metrics"][key], scale) for key, _, scale in COLUMNS]
        lines.append(f"| {g['name']} | {len(g['seeds'])} | " + " | ".join(cells) + " |")
    if summary["frontier_gaps"]:
        lines += [
            "",
            "## Frontier: out-of-domain accuracy at matched in-domain progress",
            "",
            f"Paired by seed against `{summary['reference']}`; each method's frontier pools all its sweep points "
            "and evaluations. Gaps in percentage points, mean [95% t-interval].",
            "",
        ]
        lines += [f"- {gap['verdict']}" for gap in summary["frontier_gaps"]]
    if any(g["levels"] for g in summary["frontier_gaps"]):
        lines += [
            "",
            "| in-domain level | "
            + " | ".join(f"{g['method']} − {g['reference']}" for g in summary["frontier_gaps"])
            + " |",
        ]
        lines.append("|---|" + "---|" * len(summary["frontier_gaps"]))
        levels = sorted({lv["level"] for g in summary["frontier_gaps"] for lv in g["levels"]})
        for level in levels:
            cells = []
            for g in summary["frontier_gaps"]:
                match = [lv for lv in g["levels"] if lv["level"] == level]
                cells.append(_gap(match[0]) if match else "-")
            lines.append(f"| ≥ {100 * level:.0f}% | " + " | ".join(cells) + " |")
    if summary["matched_nll"]:
        lines += [
            "",
            "## Matched training NLL",
            "",
            f"Each setting against the `{summary['reference']}` setting whose mean final training NLL is closest: "
            "does it keep more out-of-domain accuracy at the same fit? Gaps in points, paired by seed.",
            "",
            "| setting | its NLL | closest reference | its NLL | NLL intervals overlap | in-domain gap | out-of-domain gap |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in summary["matched_nll"]:
            overlap = {True: "yes", False: "no (not matched)", None: "-"}[m["nll_intervals_overlap"]]
            lines.append(
                f"| {m['setting']} | {format_estimate(m['nll'])} | {m['reference_setting']} | "
                f"{format_estimate(m['reference_nll'])} | {overlap} | {_gap(m['gap']['in_domain'])} | "
                f"{_gap(m['gap']['out_of_domain'])} |"
            )
    if summary["equal_settings"]:
        lines += [
            "",
            "## Equal hyper-parameters",
            "",
            f"Each setting against `{summary['reference']}` at the same sweep values (same learning rate): final "
            "gaps, paired by seed (accuracy in points, NLL in nats).",
            "",
            "| setting | reference | in-domain gap | out-of-domain gap | NLL gap |",
            "|---|---|---|---|---|",
        ]
        for e in summary["equal_settings"]:
            gap = e["gap"]
            lines.append(
                f"| {e['setting']} | {e['reference_setting']} | {_gap(gap['in_domain'])} | "
                f"{_gap(gap['out_of_domain'])} | {_gap(gap['nll'], 1)} |"
            )
    if plots:
        lines += ["", "## Plots", ""]
        for name in plots:
            lines += [f"![{name}]({name})", "", PLOT_CAPTIONS.get(name, ""), ""]
    return "\n".join(lines).rstrip() + "\n"
