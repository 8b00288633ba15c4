"""The README's quickstart stays true: CI runs its test command verbatim, and its files exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
