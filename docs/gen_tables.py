"""Tables of the README and the docs that quote committed reports are generated, never typed: each sits between
`<!-- generated: results-table REPORT.json -->` and `<!-- /generated -->`, and `python docs/gen_tables.py`
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


GENERATORS = {"results-table": results_table}


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
