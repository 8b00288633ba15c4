"""The README's quickstart stays true: CI runs its test command verbatim, and its files exist. Every number the
README and the docs pages quote from a report sits in a table generated from that committed report."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
from gen_tables import BLOCK, documents, regenerate  # noqa: E402


def quickstart_commands():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quickstart_is_two_commands_and_ci_runs_the_test_one():
    main_job, tests = quickstart_commands()
    assert "pytest" in tests and "pytest" not in main_job
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_main_job_config_exists():
    """The quickstart's main job is a psft command, and every example config the docs name exists."""
    main_job, _ = quickstart_commands()
    assert re.search(r"\bpsft (demo|train|compare)\b", main_job), main_job
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    named = {
        p for doc in docs for p in re.findall(r"--config(?:_file)? (examples/\S+?\.ya?ml)", doc.read_text())
    }
    assert named, "the docs name no example config: this test would check nothing"
    for path in sorted(named):
        assert (ROOT / path).is_file(), path


def test_generated_tables_equal_their_committed_reports():
    """`python docs/gen_tables.py` rewrites them; a hand edit or a new report without it fails here."""
    for path in documents():
        text = path.read_text()
        assert regenerate(text) == text, f"{path.relative_to(ROOT)}: run python docs/gen_tables.py"


def test_readme_quotes_results_only_from_generated_tables():
    """Outside generated blocks and code the README has no table and no percentage or metric value."""
    readme = (ROOT / "README.md").read_text()
    assert BLOCK.search(readme), "the README shows the demo's table"
    prose = re.sub(r"```.*?```", "", BLOCK.sub("", readme), flags=re.S)
    assert not re.search(r"(?m)^\|", prose), "a hand-written table in the README"
    assert not re.findall(r"\d+(?:\.\d+)?\s?%", prose), "a hand-written percentage in the README"


def test_readme_says_how_long_the_tests_take():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"about \d+ minutes", readme.split("## Install")[0])


def test_readme_is_one_or_two_screens():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 80


def _claim(text: str, holds: str, mean: float) -> dict:
    return {
        "claim": text,
        "unit": "points",
        "scale": 100,
        "over": "mean over levels",
        "mean": mean,
        "ci95": [mean - 0.02, mean + 0.02],
        "p_holm": 0.01 if holds != "not resolved" else 0.4,
        "holds": holds,
    }


def test_claims_blocks_quote_the_report_in_its_own_words(tmp_path):
    """The claims block lists every claim, those that hold first, each in format_claim's words; the README's
    block (claims-holding) quotes only those that hold and counts the rest."""
    import json

    from gen_tables import claims, claims_holding

    from psft.experiments.tables import format_claim

    rows = [
        _claim("a keeps more than sft", "not resolved", 0.01),
        _claim("b keeps more than sft", "holds", 0.10),
        _claim("c keeps more than sft", "does not hold", -0.05),
    ]
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"finished": 3, "planned": 5, "summary": {"claims": rows}}))
    every = claims(str(path)).splitlines()
    assert "(3 of 5 planned runs finished)" in every[0]
    assert every[2:] == [f"- {format_claim(rows[i])}" for i in (1, 2, 0)]
    holding = claims_holding(str(path)).splitlines()
    assert holding[2:] == [
        f"- {format_claim(rows[1])}",
        "- of its other claims: 1 does not hold, 1 not resolved",
    ]
    assert "holds" in holding[2] and "not resolved" not in holding[2]
    path.write_text(json.dumps({"finished": 1, "planned": 1, "summary": {"claims": [rows[0]]}}))
    assert claims_holding(str(path)).splitlines()[2:] == [
        "- none of its claims holds",
        "- of its other claims: 1 not resolved",
    ]


def test_readme_quotes_the_research_presets_claims_that_hold():
    """The README's findings are the research preset's claims that hold, generated from its committed report."""
    readme = (ROOT / "README.md").read_text()
    assert "<!-- generated: claims-holding docs/demo-full/report.json -->" in readme
