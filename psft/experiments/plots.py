"""PNG plots of a `psft compare` report (matplotlib, no display needed); `psft.experiments.report` has their captions.

Colour = method, line style = sweep point (e.g. learning rate); curves are means over seeds with a band for the
95% t-interval where there are two seeds or more (the frontier's band: the bootstrap over seeds and prompts).
Curves over steps use a log-ish step axis: the log-spaced evaluations are dense early, where forgetting starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from psft.experiments.estimates import estimate

STYLES = ("-", "--", ":", "-.")


def _settings(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(run["name"], []).append(run)
    return out


def _mean_band(runs: list[dict[str, Any]], rows: str, key: str):
    """Steps, means and (low, high) bands of `key` over the runs' `rows` ("curves" or "evals"), by step."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for row in run[rows]:
            if row.get(key) is not None:
                by_step.setdefault(row["step"], []).append(row[key])
    steps = sorted(by_step)
    stats = [estimate(by_step[s]) for s in steps]
    means = [e["mean"] for e in stats]
    low = [e["ci95"][0] if e["ci95"] else e["mean"] for e in stats]
    high = [e["ci95"][1] if e["ci95"] else e["mean"] for e in stats]
    return steps, means, low, high


def _log_steps(ax) -> None:
    """A log-ish step axis: linear below 4 (so step 0 shows), logarithmic above, so early steps are visible."""
    ax.set_xscale("symlog", linthresh=4, linscale=0.5)
    ax.set_xlabel("optimizer step (log scale above 4)")


def plot_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write frontier.png, pareto.png, forgetting.png, entropy.png, clip_ratio.png and drift.png; return their
    paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    runs = report["runs"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    settings = _settings(runs)
    points_of: dict[str, list[str]] = {}
    for name, members in settings.items():
        points_of.setdefault(members[0]["method"], []).append(name)

    def style(name: str) -> tuple:
        method = settings[name][0]["method"]
        return colors[method], STYLES[points_of[method].index(name) % len(STYLES)]

    written = []
    n_seeds = len({r["seed"] for r in runs})
    seeds_note = f"{n_seeds} seed(s)" + (", band: 95% interval" if n_seeds > 1 else "")

    def save(fig, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # each method's frontier
    fig, ax = plt.subplots(figsize=(7, 5))
    for method, frontier in report["summary"]["frontiers"].items():
        for curve in frontier["seeds"].values():
            if curve:
                xs, ys = zip(*curve, strict=True)
                ax.plot([100 * x for x in xs], [100 * y for y in ys], color=colors[method], alpha=0.3, lw=0.8)
        full = [lv for lv in frontier["levels"] if lv["n"] == lv["seeds"] and lv["mean"] is not None]
        if full:
            xs = [100 * lv["level"] for lv in full]
            ax.plot(xs, [100 * lv["mean"] for lv in full], color=colors[method], lw=2, label=method)
            if all(lv["ci95"] for lv in full):
                ax.fill_between(
                    xs,
                    [100 * lv["ci95"][0] for lv in full],
                    [100 * lv["ci95"][1] for lv in full],
                    color=colors[method],
                    alpha=0.15,
                )
    ax.set_xlabel("in-domain accuracy reached (%)")
    ax.set_ylabel("best out-of-domain accuracy at that level (%)")
    ax.set_title(f"Frontier per method over all its settings ({seeds_note}; higher is better)", fontsize=10)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(50, 50, "no in-domain level reached by every seed", ha="center", va="center")
    save(fig, "frontier.png")

    # every checkpoint of every run
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, members in settings.items():
        color, line = style(name)
        for i, run in enumerate(members):
            points = [(e["in_domain"], e["out_of_domain"], e["step"]) for e in run["evals"]
                      if e.get("in_domain") is not None and e.get("out_of_domain") is not None]  # fmt: skip
            if not points:
                continue
            xs, ys, steps = zip(*points, strict=True)
            ax.plot([100 * x for x in xs], [100 * y for y in ys], line, marker="o", ms=3, color=color,
                    label=name if i == 0 else None, alpha=0.8)  # fmt: skip
            ax.annotate(f"{steps[-1]}", (100 * xs[-1], 100 * ys[-1]), fontsize=6, color=color)
            if steps[0] == 0:
                ax.plot(100 * xs[0], 100 * ys[0], "*", color="black", ms=10)
    ax.plot([], [], "*", color="black", ms=10, label="base model (step 0)")
    ax.set_xlabel("in-domain accuracy (%)")
    ax.set_ylabel("out-of-domain accuracy (%)")
    ax.set_title("Every evaluation of every run (numbers: optimizer step of the last one)", fontsize=10)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    save(fig, "pareto.png")

    # forgetting over steps: out-of-domain accuracy and held-out NLL at each evaluation, log-ish step axis
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label, scale in (
        (axes[0], "out_of_domain", "out-of-domain accuracy (%)", 100),
        (axes[1], "heldout_nll", "held-out NLL of in-domain demonstrations (nats/token)", 1),
    ):
        for setting in settings:
            steps, means, low, high = _mean_band(settings[setting], "evals", key)
            if not steps:
                continue
            color, line = style(setting)
            ax.plot(steps, [scale * m for m in means], line, color=color, label=setting, marker="o", ms=3)
            if n_seeds > 1:
                ax.fill_between(
                    steps, [scale * v for v in low], [scale * v for v in high], color=color, alpha=0.12
                )
        _log_steps(ax)
        ax.set_ylabel(label)
    axes[0].set_title(f"Forgetting over steps ({seeds_note})", fontsize=10)
    axes[1].set_title("Fit of held-out in-domain demonstrations", fontsize=10)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=6, ncol=2)
    save(fig, "forgetting.png")

    for key, name, label, title, scale, rows in (
        ("entropy", "entropy.png", "predictive entropy (nats per token)", "Token entropy on training batches", 1, "curves"),
        ("clip_ratio/high", "clip_ratio.png", "tokens clipped: ratio > 1 + epsilon_high (%)",
         "Share of loss tokens clipped by the trust region", 100, "curves"),
        ("drift_kl", "drift.png", "KL(base || model) (nats per token)",
         "Drift from the base on out-of-domain prompts and answers", 1, "evals"),
    ):  # fmt: skip
        fig, ax = plt.subplots(figsize=(7, 4.5))
        drawn = 0
        for setting in settings:
            steps, means, low, high = _mean_band(settings[setting], rows, key)
            if not steps:
                continue
            color, line = style(setting)
            ax.plot(
                steps,
                [scale * m for m in means],
                line,
                color=color,
                label=setting,
                marker="o" if rows == "evals" else None,
                ms=3,
            )
            if n_seeds > 1:
                ax.fill_between(
                    steps, [scale * v for v in low], [scale * v for v in high], color=color, alpha=0.12
                )
            drawn += 1
        _log_steps(ax)
        ax.set_ylabel(label)
        ax.set_title(f"{title} ({seeds_note})", fontsize=10)
        if drawn:
            ax.legend(fontsize=7, ncol=2)
        else:  # e.g. no method with an old policy: say so instead of an empty legend
            ax.text(0.5, 0.5, "no run logged this metric\n(clipping exists only for objectives with an old policy)"
                    if key.startswith("clip") else "no run logged this metric",
                    ha="center", va="center", transform=ax.transAxes)  # fmt: skip
        save(fig, name)
    return written
