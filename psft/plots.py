"""PNG plots of a `psft compare` report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _curve(run: dict[str, Any], key: str) -> tuple[list[float], list[float]]:
    points = [(c["step"], c[key]) for c in run["curves"] if key in c]
    return [p[0] for p in points], [p[1] for p in points]


def _evals(run: dict[str, Any], key: str) -> tuple[list[float], list[float]]:
    points = [(e["step"], e[key]) for e in run["evals"] if e.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write entropy.png, clip_ratio.png, pareto.png and drift.png; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    runs = report["runs"]
    written = []

    def save(fig, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    for key, name, label in (
        ("entropy", "entropy.png", "token entropy (nats)"),
        ("clip_ratio/high", "clip_ratio.png", "fraction of tokens clipped (r > 1+eps_high)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for run in runs:
            steps, values = _curve(run, key)
            if values:
                ax.plot(steps, values, label=run["name"])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        save(fig, name)

    fig, ax = plt.subplots(figsize=(6, 5))
    for run in runs:
        points = [
            (e["in_domain"], e["out_of_domain"])
            for e in run["evals"]
            if e.get("in_domain") is not None and e.get("out_of_domain") is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=run["name"])
            ax.annotate("end", (xs[-1], ys[-1]), fontsize=7)
    ax.set_xlabel("in-domain accuracy")
    ax.set_ylabel("out-of-domain accuracy")
    ax.set_title("every checkpoint of every run (up-right is better)")
    ax.legend(fontsize=8)
    save(fig, "pareto.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        steps, values = _evals(run, "drift_kl")
        if values:
            ax.plot(steps, values, marker="o", label=run["name"])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("KL(base || model) on held-out text")
    ax.legend(fontsize=8)
    save(fig, "drift.png")
    return written
