"""mkdocs hooks (mkdocs.yml `hooks:`): add the generated Reference pages (docs/gen_reference.py) to the build,
so they come from the code at every build and are never committed; and the Changelog page from CHANGELOG.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.structure.files import File, Files

_spec = importlib.util.spec_from_file_location("gen_reference", Path(__file__).with_name("gen_reference.py"))
gen_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_reference)


ROOT = Path(__file__).resolve().parents[1]


def on_files(files: Files, config, **kwargs) -> Files:
    for rel, make in gen_reference.PAGES.items():
        files.append(File.generated(config, rel, content=make()))
    files.append(File.generated(config, "changelog.md", content=(ROOT / "CHANGELOG.md").read_text()))
    return files
