"""Generate the Reference pages from the code itself: every `psft` command's own `--help`, and every config
field from the dataclasses' metadata (PSFTConfig, CompareConfig, RLConfig/RLArguments, DPOArguments) and the
loss registry. Run by mkdocs at build time (docs/hooks.py); `python docs/gen_reference.py DIR` writes the pages
to DIR to look at them. Nothing here is hand-copied, so the reference cannot go stale."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def command_help(argv: list[str]) -> str:
    """What `psft ARGV` prints (it is a `--help` call: exits 0 or returns 0)."""
    from psft import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code
    if code not in (0, None):
        raise RuntimeError(f"psft {' '.join(argv)} exited {code}")
    return out.getvalue().rstrip()


def cli_reference() -> str:
    from psft import cli

    parts = [
        "# Command-line reference",
        "",
        "Generated at build time from each command's own `--help` (`docs/gen_reference.py`).",
        "",
        "## psft",
        "",
        "```text",
        command_help(["--help"]),
        "```",
    ]
    for name, (_, summary) in cli.COMMANDS.items():
        parts += ["", f"## psft {name}", "", summary, "", "```text", command_help([name, "--help"]), "```"]
    return "\n".join(parts) + "\n"


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    text = repr(value)
    return f"`{text}`" if len(text) <= 40 else f"`{text[:37]}...`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def fields_table(cls: type, own_only: bool = False) -> str:
    """A markdown table of `cls`'s dataclass fields: name, type, default, help (from `metadata`).

    `own_only` keeps the fields `cls` declares itself (not those of its base classes)."""
    own = set(cls.__dict__.get("__annotations__", {})) if own_only else None
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if own is not None and f.name not in own:
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append(f"| `{f.name}` | `{_cell(kind)}` | {_default(f)} | {_cell(f.metadata.get('help', ''))} |")
    return "\n".join(rows)


def losses_table() -> str:
    from psft.core.config import LOSS_ALIASES
    from psft.core.losses import LOSSES

    aliases: dict[str, list[str]] = {}
    for alias, name in LOSS_ALIASES.items():
        aliases.setdefault(name, []).append(alias)
    rows = ["| `loss_type` | aliases | extra per-token inputs | config fields it reads | what it is |",
            "|---|---|---|---|---|"]  # fmt: skip
    for name, spec in LOSSES.items():
        doc = (inspect.getdoc(spec.fn) or "").split("\n\n")[0]
        rows.append(
            f"| `{name}` | {', '.join(f'`{a}`' for a in aliases.get(name, [])) or '-'} | "
            f"{', '.join(f'`{t}`' for t in spec.tensors) or '-'} | "
            f"{', '.join(f'`{h}`' for h in spec.hparams) or '-'} | {_cell(doc)} |"
        )
    return "\n".join(rows)


def config_reference() -> str:
    from psft.core.config import PSFTConfig
    from psft.experiments.plan import CompareConfig
    from psft.stages.dpo import DPOArguments
    from psft.stages.rl import RLArguments, RLConfig

    return "\n".join([
        "# Configuration reference",
        "",
        "Generated at build time from the dataclasses' field metadata and the loss registry "
        "(`docs/gen_reference.py`). Every field is a YAML key and a `--flag`.",
        "",
        "## Objectives (`loss_type`)",
        "",
        "Every registered objective (`psft.core.losses.LOSSES`); `register_loss` adds your own.",
        "",
        losses_table(),
        "",
        "## `PSFTConfig` (`psft train`)",
        "",
        "psft's own fields and the defaults it changes. `PSFTConfig` also takes every field of TRL's "
        "`SFTConfig` and transformers' `TrainingArguments` (`psft train --help-all` lists them all).",
        "",
        fields_table(PSFTConfig, own_only=True),
        "",
        "## `CompareConfig` (`psft compare`, `psft demo`)",
        "",
        fields_table(CompareConfig),
        "",
        "## `RLConfig` (`psft rl`)",
        "",
        "TRL's `GRPOConfig` with these fields added or changed:",
        "",
        fields_table(RLConfig, own_only=True),
        "",
        "## `RLArguments` (`psft rl`)",
        "",
        fields_table(RLArguments),
        "",
        "## `DPOArguments` (`psft dpo`)",
        "",
        "Besides every field of TRL's `DPOConfig`:",
        "",
        fields_table(DPOArguments),
        "",
    ])  # fmt: skip


PAGES = {"reference/cli.md": cli_reference, "reference/config.md": config_reference}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "site-reference")
    for rel, make in PAGES.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(make())
        print(out / rel)
