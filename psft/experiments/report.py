"""`report.md` of a `psft compare` run: what ran, how uncertainty is measured (seeds and prompts), final metrics
with intervals (columns defined), final accuracy per evaluation set, the frontier, matched held-out NLL and
equal-settings views with Holm-adjusted verdicts, the plots with how to read them, and the claims table (also
machine-readable in report.json)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from psft.errors import UserError
from psft.experiments.plan import CompareConfig
from psft.experiments.store import _finished, _write_json, load_prompts
from psft.experiments.tables import (
    COLUMN_HELP,
    COLUMNS,
    cost_table,
    drift_lines,
    format_claim,
    format_estimate,
    p_text,
    signed,
    tasks_table,
    verdict_cell,
)

console = Console(stderr=True, soft_wrap=True)

PLOT_CAPTIONS = {
    "frontier.png": "Each method's frontier: at each in-domain accuracy (x), the best out-of-domain accuracy (y) on "
    "any of its runs' paths (every learning rate; linear between evaluations) at in-domain accuracy >= that "
    "level; thick line = mean over seeds, band = 95% bootstrap interval over seeds and prompts (levels every seed "
    "reached), thin lines = single seeds. Higher is better: a curve above another keeps more general skill at "
    "the same in-domain progress.",
    "pareto.png": "Every evaluated checkpoint of every run: x in-domain accuracy, y out-of-domain accuracy; one line "
    "per run from the base model (star, step 0) to its last evaluation (labelled with its step). Up-right is better.",
    "forgetting.png": "Out-of-domain accuracy (left) and held-out NLL of in-domain demonstrations (right) at each "
    "evaluation, against the optimizer step on a log-ish axis (step 0 at the left edge) so that the first steps, "
    "where forgetting starts, are visible; line = mean over seeds, band = 95% t-interval over seeds.",
    "entropy.png": "Mean predictive entropy (nats per token) on the training batches over optimizer steps; line = "
    "mean over seeds, band = 95% interval. A collapse towards 0 means the model became certain of its outputs.",
    "clip_ratio.png": "Share of loss tokens whose ratio to the old policy exceeds 1 + epsilon_high (they get no "
    "gradient) over optimizer steps, for objectives with an old policy (PSFT); line = mean over seeds, band = 95% "
    "interval.",
    "drift.png": "KL(base || model) per token (nats) on the out-of-domain prompts with their reference answers, at "
    "each evaluation (log-ish step axis): how far the model moved from the base on text it should not have changed.",
}


NOISE_TEXT = (
    "Two sources of noise enter every accuracy: the seed (each run's data order and initialisation) and the "
    "finite set of evaluation prompts (a run's accuracy on n prompts has a binomial error of sqrt(p(1-p)/n)). "
    "Intervals on accuracies, held-out NLL and gaps come from a bootstrap over both ({reps} replicates): each "
    "replicate draws the seeds with replacement and the prompts with replacement (one draw shared by every seed, "
    "since every run is scored on the same prompts), and the same draws serve both methods of a comparison, so "
    "gaps are paired by seed and prompt. Few seeds are corrected for: the standard error takes the unbiased "
    "variance across seeds plus the prompt variance, p-values use Student's t on Welch-Satterthwaite degrees of "
    "freedom (S - 1 when the seeds dominate), and each interval is at least the estimate ± t × se. "
    "Verdicts: within each table (every method and level of it), p-values are Holm-adjusted (family-wise error "
    'at most 5% per table); "above"/"below" when the adjusted test of no difference rejects, "equivalent '
    'within ±m" only when the adjusted two one-sided tests (TOST, margin m = {acc} points for accuracies, '
    '{ent} nats for entropy) reject a difference of m or more, otherwise "not resolved": the data do not '
    "decide. With one seed the seed noise is not measured: intervals cover prompts only and nothing is tested."
)


def _noise_section(summary: dict[str, Any]) -> list[str]:
    noise = summary.get("noise") or {}
    lines = ["", "## Uncertainty", ""]
    lines.append(NOISE_TEXT.format(reps=noise.get("reps", "-"), acc=f"{100 * noise.get('accuracy_margin', 0):g}",
                                   ent=f"{noise.get('entropy_margin', 0):g}"))  # fmt: skip
    if not noise.get("prompt_level"):
        lines += ["", "These runs have no per-prompt results (prompts.jsonl): intervals resample seeds only and "
                  "understate the prompt noise."]  # fmt: skip
    else:
        lines += [
            "",
            f"Prompts per evaluation: {noise['in_domain_prompts']} in-domain, {noise['out_of_domain_prompts']} "
            "out-of-domain. Size of each source at the last evaluation, in points: prompt = the binomial standard "
            "error of one run (mean over seeds), seed = the standard deviation across seeds.",
            "",
            "| setting | in-domain: prompt SE | in-domain: seed SD | out-of-domain: prompt SE | out-of-domain: seed SD |",
            "|---|---|---|---|---|",
        ]
        for g in summary["groups"]:
            cells = []
            for key in ("in_domain", "out_of_domain"):
                n = (g.get("noise") or {}).get(key) or {}
                cells += [_num(n.get("prompt_se")), _num(n.get("seed_sd"))]
            lines.append(f"| {g['name']} | " + " | ".join(cells) + " |")
    return lines


TASKS_HELP = (
    "Each evaluation set apart (the in-domain and out-of-domain columns above average their sets): greedy "
    "accuracy at the last evaluation, mean over seeds [95% bootstrap interval over seeds and prompts]. base: the "
    "base model, at step 0 of the runs (interval over prompts). A set the base already fails cannot show "
    "forgetting."
)


def _tasks_section(summary: dict[str, Any]) -> list[str]:
    table = tasks_table(summary)
    return ["", "## Final accuracy per evaluation set", "", TASKS_HELP, "", *table] if table else []


COST_HELP = (
    "Minutes per finished run, by method: median (range) of the wall time, which includes any wait for the cores "
    "(runs side by side, other work on the machine), and of the CPU time, what an idle core would take. A resumed "
    "run counts every piece. Training includes the old-policy pass and any reference table; evaluation is every "
    "evaluation of the run, step 0 included. The last row sums every run (with `--jobs N` the elapsed time is "
    "about that over N)."
)


def _num(value: float | None, scale: float = 100) -> str:
    return "-" if value is None else f"{scale * value:.1f}"


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
        steps = sorted({e["step"] for r in runs for e in r.get("evals", [])})
        lines += ["", f"Evaluated at steps {', '.join(map(str, steps))}; time per run: [Cost](#cost)."]
    if report["missing"]:
        lines += ["", f"Not finished (not in any number below): {', '.join(report['missing'])}."]
    if summary.get("groups"):
        lines += _noise_section(summary)
    lines += ["", "## Final metrics per setting", "", COLUMN_HELP, ""]
    lines.append("| setting | seeds | " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    lines.append("|---|---|" + "---|" * len(COLUMNS))
    for g in summary["groups"]:
        cells = [format_estimate(g["metrics"].get(key, {}), scale) for key, _, scale in COLUMNS]
        lines.append(f"| {g['name']} | {len(g['seeds'])} | " + " | ".join(cells) + " |")
    lines += _tasks_section(summary)
    gaps = [g for g in summary["frontier_gaps"] if g["levels"]]
    if summary["frontier_gaps"]:
        family = next((lv["family"] for g in gaps for lv in g["levels"]), 0)
        lines += [
            "",
            "## Frontier: out-of-domain accuracy at matched in-domain accuracy",
            "",
            f"Each method's frontier (best interpolated out-of-domain accuracy over its runs at in-domain accuracy "
            f">= the level) minus `{summary['reference']}`'s, paired by seed and prompt, in points: mean [95% "
            f"bootstrap interval] and verdict, Holm-adjusted over the {family} tests of this table. Levels: those "
            "every shared seed of both methods reaches.",
        ]
        for g in summary["frontier_gaps"]:
            if not g["levels"]:
                lines.append(f"\n- {g['method']} vs {g['reference']}: no in-domain level of at least 5% reached by "
                             "every seed of both; no comparison.")  # fmt: skip
    if gaps:
        lines += [
            "",
            "| in-domain level | " + " | ".join(f"{g['method']} − {g['reference']}" for g in gaps) + " |",
        ]
        lines.append("|---|" + "---|" * len(gaps))
        for level in sorted({lv["level"] for g in gaps for lv in g["levels"]}):
            cells = []
            for g in gaps:
                match = [lv for lv in g["levels"] if lv["level"] == level]
                cells.append(verdict_cell(match[0]) if match else "-")
            lines.append(f"| ≥ {100 * level:.0f}% | " + " | ".join(cells) + " |")
    matched = [m for m in summary.get("matched_nll", []) if m["targets"]]
    if summary.get("matched_nll"):
        lines += [
            "",
            "## Matched held-out NLL",
            "",
            "Held-out NLL: per token, of the in-domain test demonstrations, measured at every evaluation. At each "
            "target NLL (between the base model's and the lowest every seed of both methods reaches; a target every "
            "run reaches before its first evaluation after step 0 is left out, as there every run's value is "
            "interpolated from the same base model), each run's "
            "out-of-domain accuracy and entropy are interpolated where its held-out NLL first falls to the target; "
            "a method's value is the best accuracy (mean entropy) over its runs. Gaps against "
            f"`{summary['reference']}`, paired by seed and prompt: accuracy in points, entropy in nats; verdicts "
            "Holm-adjusted over every method and target (accuracy and entropy are two families).",
            "",
        ]
        for m in summary["matched_nll"]:
            if not m["targets"]:
                lines.append(f"- {m['method']} vs {m['reference']}: no held-out NLL target reached by every seed "
                             "of both after the first evaluation (or no held-out NLL recorded); no comparison.")  # fmt: skip
        if matched:
            lines += [
                "| method | held-out NLL target | out-of-domain gap | entropy gap |",
                "|---|---|---|---|",
            ]
            for m in matched:
                for t in m["targets"]:
                    lines.append(f"| {m['method']} | {t['target']:.3f} | {verdict_cell(t['out_of_domain'])} | "
                                 f"{verdict_cell(t['entropy'], 1, 3)} |")  # fmt: skip
    if summary["equal_settings"]:
        lines += [
            "",
            "## Equal hyper-parameters",
            "",
            f"Each setting against `{summary['reference']}` at the same sweep values (same learning rate): final "
            "gaps paired by seed and prompt (accuracy in points, held-out NLL in nats), the entropy gap at equal "
            "step (mean over every logged training step, nats) and the final drift gap (KL from the base on the "
            "out-of-domain texts, nats per token); the last two are one number per run, so their intervals are over "
            "seeds only. Verdicts Holm-adjusted over the table's accuracy gaps, and separately over its entropy and "
            "its drift gaps.",
            "",
            "| setting | reference | in-domain gap | out-of-domain gap | held-out NLL gap | entropy gap (equal step) "
            "| drift gap (final) |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in summary["equal_settings"]:
            gap = e["gap"]
            lines.append(
                f"| {e['setting']} | {e['reference_setting']} | {verdict_cell(gap['in_domain'])} | "
                f"{verdict_cell(gap['out_of_domain'])} | {signed(gap['heldout_nll'], 1, 3)} | {verdict_cell(gap['entropy'], 1, 3)} "
                f"| {verdict_cell(gap.get('drift') or {}, 1, 3)} |"
            )
        if summary.get("drift"):
            lines += ["", *drift_lines(summary)]
    if plots:
        lines += ["", "## Plots", ""]
        for name in plots:
            lines += [f"![{name}]({name})", "", PLOT_CAPTIONS.get(name, ""), ""]
    if runs:
        lines += ["", "## Cost", "", COST_HELP, "", *cost_table(runs)]
    claims = summary.get("claims") or []
    if claims:
        lines += [
            "",
            "## Claims",
            "",
            f"Each claim of a method against `{summary['reference']}`, generated from the data: the effect (accuracy "
            "in points, entropy in nats) with its 95% bootstrap interval over seeds and prompts, the p-value of "
            f'"no effect" Holm-adjusted over the {claims[0]["family"]} claims of this table, and whether it holds: '
            '"holds" (adjusted p < 0.05, effect in the claimed direction), "does not hold" (the opposite '
            'direction shown, or equivalence within the margin shown by TOST) or "not resolved". report.json '
            "has the same rows under summary.claims.",
            "",
            "| claim | effect [95% CI] | over | Holm-adjusted p | test | holds |",
            "|---|---|---|---|---|---|",
        ]
        for c in claims:
            digits = 1 if c["scale"] == 100 else 3
            lines.append(
                f"| {c['claim']} | {signed(c, c['scale'], digits)} {c['unit']} | {c['over']} | {p_text(c.get('p_holm'))} "
                f"| {c['test']} | {c['holds']} |"
            )
    return "\n".join(lines).rstrip() + "\n"


def load_report(out_dir: str | Path, reps: int | None = None) -> dict[str, Any]:
    """The report of what is in `out_dir` now: its planned runs (config.json), the finished ones and the summary."""
    from psft.experiments.analysis import summarize
    from psft.experiments.estimates import REPS

    out = Path(out_dir)
    path = out / "config.json"
    if not path.is_file():
        raise UserError(f"{out}: no config.json here; is it the output_dir of a `psft compare` run?")
    config = CompareConfig(**json.loads(path.read_text()))
    plan = config.runs()
    results = []
    for run in plan:
        try:
            result = _finished(out, config, run)
        except UserError as err:
            console.print(f"[yellow]skipped[/yellow] {escape(str(err))}")
            continue
        if result is not None:
            results.append(result)
    finished = {r["id"] for r in results}
    return {
        "config": asdict(config),
        "planned": len(plan),
        "finished": len(results),
        "missing": [r["id"] for r in plan if r["id"] not in finished],
        "runs": results,
        "summary": summarize(results, config.reference(), load_prompts(out, results), reps or REPS),
    }


def write_report(
    out_dir: str | Path, plots: bool = True, table: bool = True, reps: int | None = None
) -> dict[str, Any]:
    """Rebuild report.json and report.md (and the plots and terminal table) from the runs on disk; `reps`
    bootstrap replicates (default `psft.experiments.estimates.REPS`)."""
    out = Path(out_dir)
    report = load_report(out, reps)
    _write_json(out / "report.json", report)
    written = []
    if plots and report["runs"]:
        from psft.experiments.plots import plot_report

        written = plot_report(report, out)
    (out / "report.md").write_text(render_markdown(report, [p.name for p in written]))
    if table:
        print_table(report)
    return report


def print_table(report: dict[str, Any]) -> None:
    """Per setting, final metrics as mean [95% interval] over seeds; the columns are defined below it."""
    table = Table(title=f"psft compare: {report['finished']}/{report['planned']} runs finished")
    table.add_column("setting", justify="left")
    table.add_column("seeds", justify="right")
    for _, title, _ in COLUMNS:
        table.add_column(title, justify="right")
    for group in report["summary"]["groups"]:
        cells = [format_estimate(group["metrics"][key], scale) for key, _, scale in COLUMNS]
        table.add_row(escape(group["name"]), str(len(group["seeds"])), *cells)  # "sft[lr=...]" is not markup
    console_out = Console(width=max(140, Console().width))
    console_out.print(table)
    console_out.print(COLUMN_HELP)
    for claim in report["summary"].get("claims", []):
        console_out.print(f"claim: {escape(format_claim(claim))}")
