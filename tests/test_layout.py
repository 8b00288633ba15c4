"""The package layout (ARCHITECTURE.md): imports only go down the packages, and the 0.1 module names still import,
as their new homes, with a DeprecationWarning, for one release."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import psft

ROOT = Path(__file__).resolve().parents[1]
# lower packages never import higher ones (ARCHITECTURE.md)
LAYER = {"errors": 0, "_compat": 0, "data": 1, "tasks": 1, "core": 2, "eval": 3, "stages": 4, "experiments": 5,
         "cli": 6}


def _package(module: str) -> str:
    return module.split(".")[1]


def test_no_module_imports_a_package_above_its_own():
    upward = []
    for path in sorted((ROOT / "psft").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if len(parts) < 2 or parts[1] == "__init__":
            continue  # psft/__init__.py: the lazy public names and the aliases
        own = LAYER[parts[1]]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("psft."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("psft.")]
            upward += [f"{path.name}:{node.lineno} -> {n}" for n in names if LAYER[_package(n)] > own]
    assert upward == []


@pytest.mark.parametrize("old, new", [("psft.losses", "psft.core.losses"), ("psft.records", "psft.data.validate")])
def test_an_old_module_name_is_the_new_module_with_a_deprecation_warning(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)  # monkeypatching the old name patches the real module
    assert module.__spec__.name == new


def test_the_old_flat_data_module_names_resolve_through_the_package():
    import psft.data
    from psft.data.sft import load_sft_dataset

    with pytest.warns(DeprecationWarning, match="psft.data.sft"):
        assert psft.data.load_sft_dataset is load_sft_dataset
    with pytest.raises(AttributeError):
        psft.data.no_such_name  # noqa: B018


def test_every_alias_points_at_a_module_that_exists():
    for old, new in psft._MOVED.items():
        assert importlib.util.find_spec(new) is not None, (old, new)
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), old  # the real file would shadow the alias


def test_python_m_psft_cli_runs_the_dispatcher():
    out = subprocess.run([sys.executable, "-m", "psft.cli", "--help"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("usage: psft <command>")
