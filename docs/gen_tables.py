"""Tables and claims of the README and the docs that quote committed reports are generated, never typed: each
sits between `<!-- generated: KIND REPORT.json -->` (KIND: results-table or claims) and `<!-- /generated -->`, and `python docs/gen_tables.py`
rewrites every such block from its report (tests/test_readme.py fails when one differs from its report)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BLOCK = re.compile(r"(<!-- generated: (\S+) (\S+) -->\n)(.*?)(<!-- /generated -->)", re.S)
# (metric key, column title, scale) of psft.experiments.report.COLUMNS that the quoted tables show
SHOWN = ("in_domain", "out_of_domain", "nll", "drift_kl", "entropy", "clip_high")


def results_table(report_path: str) -> str:
    """The final-metrics table of a `psft compare` report.json: mean [95% interval] over seeds per setting."""
    from psft.experiments.report import COLUMNS, format_estimate

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


VERDICT_ORDER = ("holds", "does not hold", "not resolved")


def claims(report_path: str) -> str:
    """The claims of a report.json in its own words (psft.experiments.report.format_claim), those that hold first;
    a claim that does not hold or is not resolved says so. A report without claims (one seed) says that."""
    from psft.experiments.report import format_claim

    report = json.loads((ROOT / report_path).read_text())
    rows = report["summary"].get("claims") or []
    finished, planned = report["finished"], report["planned"]
    head = f"From `{report_path}` ({finished} of {planned} planned runs finished):\n\n"
    if not rows:
        return head + "- no claims: the report has too few seeds to test any\n"
    rank = {v: i for i, v in enumerate(VERDICT_ORDER)}
    ordered = sorted(rows, key=lambda c: rank.get(c["holds"], len(rank)))
    return head + "".join(f"- {format_claim(c)}\n" for c in ordered)


GENERATORS = {"results-table": results_table, "claims": claims}


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
