"""Every shell command in the README and the docs pages runs (issue 27): each ```bash block is either marked
`<!-- skip: REASON -->` on the line before it (network, GPUs, minutes to hours) or is run here, in order, in one
scratch directory, with the short forms the docs name (`--max_steps 2` for training, `--limit 4
--max-new-tokens 32` for evaluation, `--quick` for compare/demo)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
from gen_tables import documents  # noqa: E402

FENCE = re.compile(r"(?:<!-- skip: (?P<reason>[^>]*?) -->\n)?```bash\n(?P<body>.*?)```", re.S)
# the short form of each long command: training steps, evaluated records, the smoke runs
QUICK = [
    (re.compile(r"^psft (train|rl|dpo)\b"), " --max_steps 2"),
    (re.compile(r"^psft eval\b"), " --limit 4 --max-new-tokens 32"),
    (re.compile(r"^psft (demo|compare --config)\b"), " --quick"),
]


def blocks() -> list[tuple[str, str | None, list[str]]]:
    """(id, skip reason or None, commands) of every ```bash block, in the order of `documents()`."""
    found = []
    for path in documents():
        text = path.read_text()
        for n, match in enumerate(FENCE.finditer(text)):
            body = match.group("body").replace("\\\n", " ")
            commands = [re.sub(r"\s+#\s.*$", "", line).strip() for line in body.splitlines()]
            block_id = f"{path.relative_to(ROOT)}:{text[: match.start()].count(chr(10)) + 1}"
            found.append((block_id, match.group("reason"), [c for c in commands if c]))
            assert n < 100
    return found


def quick(command: str) -> str:
    """`command` in its short form: a flag appended for the long-running commands."""
    for pattern, flag in QUICK:
        if pattern.search(command):
            return " ".join(command.split()) + flag
    return " ".join(command.split())


def test_every_block_is_run_or_skipped_with_a_reason():
    all_blocks = blocks()
    assert len(all_blocks) >= 10
    for block_id, reason, commands in all_blocks:
        assert commands, block_id
        if reason is None:
            assert not any(c.startswith(("pip ", "accelerate ")) for c in commands), (
                f"{block_id}: installs packages or needs several devices: mark it <!-- skip: why -->"
            )
        else:
            assert len(reason.split()) >= 3, f"{block_id}: say why it is skipped"


def test_no_placeholder_in_a_command():
    for block_id, _, commands in blocks():
        for command in commands:
            assert "..." not in command and "<" not in command, f"{block_id}: {command}"


def test_quick_forms():
    assert (
        quick("psft train --config examples/psft-tiny.yaml")
        == "psft train --config examples/psft-tiny.yaml --max_steps 2"
    )
    assert quick("psft eval --model m --data d") == "psft eval --model m --data d --limit 4 --max-new-tokens 32"
    assert quick("psft compare --config c.yaml --jobs 2") == "psft compare --config c.yaml --jobs 2 --quick"
    assert quick("psft compare --report r") == "psft compare --report r"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One directory for every block, so that a page's later commands find what its earlier ones wrote."""
    directory = tmp_path_factory.mktemp("docs-commands")
    for name in ("examples", "docs"):
        (directory / name).symlink_to(ROOT / name)
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("block_id, reason, commands", blocks(), ids=[b[0] for b in blocks()])
def test_block_runs(block_id, reason, commands, scratch):
    if reason is not None:
        pytest.skip(reason)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    bin_dir = str(Path(sys.executable).parent)  # the `psft` of this environment
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", quick(command)], cwd=scratch, env=env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, f"{block_id}: {quick(command)}\n{result.stderr[-3000:]}"
