"""`psft --version`, and `--help` that answers without importing torch: rendered from a help spec (the parser's
options as JSON) that must print exactly what argparse prints, and is used only while it is fresh."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import psft
from psft.cli import help as cli_help
from psft.cli.help import SPEC_COMMANDS, cached_help, help_spec, own_fields, render

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **env: str) -> str:
    import os

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_package_version(flag):
    out = subprocess.run(
        [sys.executable, "-m", "psft.cli", flag], capture_output=True, text=True, check=True
    ).stdout
    name, version, *stack = out.split()
    assert (name, version) == ("psft", psft.__version__)
    assert "torch" in stack and "trl" in stack  # the stack it runs on, for bug reports
    static = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    if static:  # a static version in pyproject.toml must agree with the package's
        assert static.group(1) == psft.__version__


def spec_of(command: str) -> tuple[dict, object, str]:
    """The command's help spec as it comes back from JSON, its live parser and usage."""
    module = importlib.import_module(SPEC_COMMANDS[command])
    parser = module.make_parser()
    return json.loads(json.dumps(help_spec(parser, module.USAGE))), parser, module.USAGE


@pytest.mark.parametrize("command", list(SPEC_COMMANDS))
def test_help_rendered_from_a_spec_is_what_argparse_prints(command, monkeypatch):
    """`--help-all` from the JSON spec equals TRL's parser printing itself (psft's options moved first): every
    option, metavar, choice, default and group survives the spec."""
    monkeypatch.setenv("COLUMNS", "100")
    spec, parser, usage = spec_of(command)
    parser.usage = usage
    cli_help._own_group_first(parser, own_fields(parser))
    assert render(spec, full=True) == parser.format_help()
    short = render(spec, full=False)
    assert (
        short.index("psft options:")
        < short.index("common options")
        < short.index(f"psft {command} --help-all")
    )


def test_train_help_from_a_fresh_cached_spec_imports_neither_torch_nor_trl(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    spec, _, _ = spec_of("train")
    cli_help._save(tmp_path / "psft" / "help" / "train.json", spec)
    code = (
        "import sys, pathlib, psft.cli.help as h; h.SHIPPED = pathlib.Path('/nonexistent'); import psft.cli; "
        "psft.cli.main(['train', '--help']); print('torch' in sys.modules, 'trl' in sys.modules)"
    )
    out = run_python(code, XDG_CACHE_HOME=str(tmp_path), COLUMNS="100")
    assert out.endswith("False False\n")
    assert out[: -len("False False\n")] == render(spec, full=False)


def test_a_stale_spec_is_not_used(tmp_path, monkeypatch):
    """Another TRL version or a changed psft dataclass: the command builds its parser instead."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cli_help, "SHIPPED", tmp_path / "none")
    spec, _, _ = spec_of("train")
    path = tmp_path / "psft" / "help" / "train.json"
    cli_help._save(path, spec)
    assert cached_help("train", ["--config", "x.yaml", "--help"]) == render(spec, full=False)
    assert cached_help("train", ["--config", "x.yaml"]) is None  # no help asked for
    for key, value in (("versions", {**spec["fingerprint"]["versions"], "trl": "0.0.1"}),
                       ("sources", {**spec["fingerprint"]["sources"], "psft.core.config.PSFTConfig": "0" * 40})):  # fmt: skip
        stale = {**spec, "fingerprint": {**spec["fingerprint"], key: value}}
        cli_help._save(path, stale)
        assert cached_help("train", ["--help"]) is None, key


def test_shipped_specs_are_fresh():
    """The specs in psft/assets/help describe this psft and the TRL/transformers it is pinned to; after changing
    an option, a psft dataclass or psft/cli/help.py, refresh them with `python -m psft.cli.help`."""
    for command in SPEC_COMMANDS:
        shipped = json.loads((cli_help.SHIPPED / f"{command}.json").read_text())
        live = spec_of(command)[0]
        if shipped["fingerprint"]["versions"] != live["fingerprint"]["versions"]:
            pytest.skip(f"shipped specs are for {shipped['fingerprint']['versions']}")
        assert cli_help.is_fresh(shipped), f"{command}: stale; run python -m psft.cli.help"
        assert {k: v for k, v in shipped.items() if k != "fingerprint"} == {
            k: v for k, v in live.items() if k != "fingerprint"
        }, f"{command}: stale; run python -m psft.cli.help"


def test_eval_help_imports_no_torch():
    code = (
        "import sys, psft.cli\ntry:\n    psft.cli.main(['eval', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = run_python(code)
    assert "--drift-base" in out and out.endswith("False\n")
