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
    main_job, _ = quickstart_commands()
    for path in re.findall(r"--config (\S+)", main_job):
        assert (ROOT / path).is_file(), path
