"""Tables and claims of the README and the docs that quote committed reports are generated, never typed: each
sits between `<!-- generated: KIND REPORT.json -->` (KIND: results-table, per-task-table, cost-table, drift, claims
or claims-holding) and `<!-- /generated -->`, and `python docs/gen_tables.py` rewrites every such block from its
report (tests/test_readme.py fails when one differs from its report)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BLOCK = re.compile(r"(<!-- generated: (\S+) (\S+) -->\n)(.*?)(<!-- /generated -->)", re.S)
# (metric key, column title, scale) of psft.experiments.tables.COLUMNS that the quoted tables show
SHOWN = ("in_domain", "out_of_domain", "nll", "drift_kl", "entropy", "clip_high")


def results_table(report_path: str) -> str:
    """The final-metrics table of a `psft compare` report.json: mean [95% interval] over seeds per setting."""
    from psft.experiments.tables import COLUMNS, format_estimate

    report = json.loads((ROOT / report_path).read_text())
    columns = [c for c in COLUMNS if c[0] in SHOWN]
    rows = [
        "| setting | seeds | " + " | ".join(title for _, title, _ in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for group in report["summary"]["groups"]:
        cells = [format_estimate(group["metrics"][key], scale) for key, _, scale in columns]
        rows.append(f"| {group['name']} | {len(group['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def per_task_table(report_path: str) -> str:
    """The final accuracy per evaluation set of a report.json, with the base model's row (`tables.tasks_table`)."""
    from psft.experiments.tables import tasks_table

    report = json.loads((ROOT / report_path).read_text())
    return "".join(line + "\n" for line in tasks_table(report["summary"]))


def cost_table(report_path: str) -> str:
    """The minutes per run by method, wall and CPU, of a report.json (`tables.cost_table`)."""
    from psft.experiments.tables import cost_table as table

    report = json.loads((ROOT / report_path).read_text())
    return "".join(line + "\n" for line in table(report["runs"]))


def drift(report_path: str) -> str:
    """Each method's final drift from the base against the reference's, over the equal-learning-rate pairs of a
    report.json (`tables.drift_lines`)."""
    from psft.experiments.tables import drift_lines

    report = json.loads((ROOT / report_path).read_text())
    lines = drift_lines(report["summary"]) or ["- no equal-learning-rate pairs with drift recorded"]
    return "".join(line + "\n" for line in lines)


VERDICT_ORDER = ("holds", "does not hold", "not resolved")


def _claims(report_path: str, holding_only: bool) -> str:
    from psft.experiments.tables import format_claim

    report = json.loads((ROOT / report_path).read_text())
    rows = report["summary"].get("claims") or []
    head = f"From `{report_path}` ({report['finished']} of {report['planned']} planned runs finished):\n\n"
    if not rows:
        return head + "- no claims: the report has too few seeds to test any\n"
    rank = {v: i for i, v in enumerate(VERDICT_ORDER)}
    shown = sorted(rows, key=lambda c: rank.get(c["holds"], len(rank)))
    if holding_only:
        shown = [c for c in shown if c["holds"] == "holds"]
    lines = [f"- {format_claim(c)}\n" for c in shown]
    if holding_only:
        others = {v: sum(c["holds"] == v for c in rows) for v in VERDICT_ORDER[1:]}
        plural = {"does not hold": "do not hold"}  # "14 do not hold", "1 does not hold"
        rest = ", ".join(f"{n} {plural.get(v, v) if n > 1 else v}" for v, n in others.items() if n)
        lines = lines or ["- none of its claims holds\n"]
        if rest:
            lines.append(f"- of its other claims: {rest}\n")
    return head + "".join(lines)


def claims(report_path: str) -> str:
    """Every claim of a report.json in its own words (psft.experiments.tables.format_claim), those that hold
    first; each says whether it holds, does not hold or is not resolved."""
    return _claims(report_path, holding_only=False)


def claims_holding(report_path: str) -> str:
    """Only the claims of a report.json that hold, in its own words, and how many others do not hold or are not
    resolved: what the README may quote."""
    return _claims(report_path, holding_only=True)


GENERATORS = {
    "results-table": results_table,
    "per-task-table": per_task_table,
    "cost-table": cost_table,
    "drift": drift,
    "claims": claims,
    "claims-holding": claims_holding,
}


def regenerate(text: str) -> str:
    """`text` with every generated block rewritten from its report."""
    return BLOCK.sub(lambda m: m.group(1) + GENERATORS[m.group(2)](m.group(3)) + m.group(5), text)


def documents() -> list[Path]:
    """The README and the docs pages (not the reports' own directories)."""
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


if __name__ == "__main__":
    for path in documents():
        text = path.read_text()
        new = regenerate(text)
        if new != text:
            path.write_text(new)
            print(f"rewrote {path.relative_to(ROOT)}")
