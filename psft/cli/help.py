"""Readable and fast `--help` for the commands built on TRL's parser (`psft train`, `psft rl`, `psft dpo`).

TRL's parser lists every field of `TrainingArguments` (900 lines) in one group. `--help` prints psft's own
options (fields declared in psft's dataclasses) and the upstream ones most runs set; `--help-all` prints the
full list with psft's options first.

Fast: those dataclasses live in modules that import torch (`transformers.training_args` does), seconds before
the first line of help. So the help is rendered from a *spec*, the parser's options as JSON (`help_spec`), and
`psft <command> --help` reads a spec that is still fresh (`cached_help`) without importing the command: the one
shipped in `psft/assets/help/` (written by `python -m psft.cli.help`) or the one the last slow `--help` saved in
the user's cache. Fresh means: the same psft, TRL and transformers versions, and the same source of every psft
dataclass of the parser (and of this module); anything else falls back to building the parser. The text is the
same either way (argparse formats the spec's options at the terminal's width).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

# upstream (TRL / transformers) fields most runs set, in this order, shown by the short help when present
COMMON_FIELDS = (
    "model_name_or_path", "dataset_name", "output_dir", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps",
    "weight_decay", "max_grad_norm", "max_length", "assistant_only_loss", "completion_only_loss", "packing",
    "num_generations", "max_completion_length", "logging_steps", "eval_strategy", "save_strategy", "report_to",
    "fp16", "activation_checkpointing", "use_cpu", "dtype", "use_peft", "lora_r", "seed", "resume_from_checkpoint",
)  # fmt: skip

HELP_FLAGS = ("-h", "--help", "--help-all")
SHIPPED = (
    Path(__file__).parents[1] / "assets" / "help"
)  # specs shipped with the package (python -m psft.cli.help)
UPSTREAM = ("trl", "transformers")  # the packages whose dataclasses the parsers list
_ACTION_FIELDS = (
    "option_strings",
    "dest",
    "nargs",
    "const",
    "default",
    "choices",
    "required",
    "help",
    "metavar",
)


def own_fields(parser: argparse.ArgumentParser) -> list[str]:
    """Names of the fields declared in psft's own classes among the parser's dataclasses, in declaration order."""
    names: list[str] = []
    for dtype in getattr(parser, "dataclass_types", ()):
        for f in dataclasses.fields(dtype):
            owner = next((c for c in dtype.__mro__ if f.name in vars(c).get("__annotations__", {})), dtype)
            if owner.__module__.startswith("psft") and f.name not in names:
                names.append(f.name)
    return names


def _psft_classes(parser: argparse.ArgumentParser) -> list[type]:
    """The parser's dataclasses, and their bases, that psft defines (their source decides the help)."""
    classes = []
    for dtype in getattr(parser, "dataclass_types", ()):
        classes += [c for c in dtype.__mro__ if c.__module__.startswith("psft.") and c not in classes]
    return classes


# ------------------------------------------------------------------------------------------------ spec
def help_spec(parser: argparse.ArgumentParser, usage: str) -> dict[str, Any]:
    """Everything `--help` and `--help-all` print, as JSON data: the options (as argparse holds them), their
    groups, which are psft's own, and the fingerprint that says when the spec is stale."""
    index = {id(action): i for i, action in enumerate(parser._actions)}
    return {
        "fingerprint": fingerprint([(c.__module__, c.__qualname__) for c in _psft_classes(parser)]),
        "prog": parser.prog,
        "usage": usage,
        "description": parser.description,
        "epilog": parser.epilog,
        "own": own_fields(parser),
        "actions": [
            {key: _plain(key, getattr(action, key)) for key in _ACTION_FIELDS} for action in parser._actions
        ],
        "groups": [
            [group.title, group.description, [index[id(a)] for a in group._group_actions]]
            for group in parser._action_groups
        ],
    }


def _plain(key: str, value: Any) -> Any:
    """An action's attribute as JSON keeps what help prints of it: choices and a tuple metavar item by item, any
    other value that JSON would change (a list default, an enum) as its str (what `%(default)s` prints)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if key == "option_strings":
        return list(value)
    if key == "choices":
        return [str(choice) for choice in value]
    if key == "metavar":  # a tuple: one name per argument
        return [str(name) for name in value]
    return str(value)


def _parser_from_spec(spec: dict[str, Any]) -> argparse.ArgumentParser:
    """A plain argparse parser that formats help exactly as the spec's parser did."""
    parser = argparse.ArgumentParser(
        prog=spec["prog"],
        usage=spec["usage"],
        description=spec["description"],
        epilog=spec["epilog"],
        add_help=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    actions = []
    for fields_ in spec["actions"]:
        # argparse tests SUPPRESS by identity: JSON gives back an equal string, not the same object
        restored = {k: argparse.SUPPRESS if v == argparse.SUPPRESS else v for k, v in fields_.items()}
        if isinstance(restored["metavar"], list):
            restored["metavar"] = tuple(restored["metavar"])
        actions.append(argparse.Action(**restored))
    parser._action_groups.clear()
    for title, description, members in spec["groups"]:
        group = parser.add_argument_group(title, description)
        group._group_actions.extend(actions[i] for i in members)
    parser._actions.extend(actions)
    return parser


def render(spec: dict[str, Any], full: bool) -> str:
    """The text of `--help` (psft's options and the common upstream ones) or `--help-all` (every option,
    psft's first)."""
    parser = _parser_from_spec(spec)
    own = spec["own"]
    if full:
        _own_group_first(parser, own)
        return parser.format_help()
    short = argparse.ArgumentParser(
        prog=parser.prog, usage=parser.usage, add_help=False, formatter_class=parser.formatter_class
    )
    short._action_groups.clear()
    for title, actions in (
        ("psft options", _actions(parser, own)),
        ("common options (TRL / transformers)", _actions(parser, [n for n in COMMON_FIELDS if n not in own])),
    ):
        group = short.add_argument_group(title)
        group._group_actions.extend(actions)
    total = sum(1 for a in parser._actions if a.option_strings)
    text = short.format_help().rstrip()
    return (
        f"{text}\n\nAll {total} options (every field of TRL's and transformers' configs): {parser.prog} "
        "--help-all\n"
    )


def _actions(parser: argparse.ArgumentParser, names: list[str] | tuple[str, ...]) -> list[argparse.Action]:
    by_dest = {a.dest: a for a in parser._actions}
    return [by_dest[n] for n in names if n in by_dest]


def _own_group_first(parser: argparse.ArgumentParser, own: list[str]) -> None:
    """Move psft's own options into their own group, printed before the upstream ones."""
    actions = _actions(parser, own)
    for group in parser._action_groups:
        group._group_actions[:] = [a for a in group._group_actions if a not in actions]
    group = parser.add_argument_group("psft options")
    group._group_actions.extend(actions)
    parser._action_groups.remove(group)
    parser._action_groups.insert(0, group)


def show_help(argv: list[str], parser: argparse.ArgumentParser, usage: str) -> bool:
    """Print help if `argv` asks for it and return True: `-h`/`--help` the short form, `--help-all` all options
    (psft's first). Saves the spec in the user's cache, so the next `--help` need not build the parser."""
    if not set(HELP_FLAGS) & set(argv):
        return False
    spec = help_spec(parser, usage)
    _save(_cache_dir() / f"{_command(parser)}.json", spec)
    print(render(spec, "--help-all" in argv), end="")
    return True


# ----------------------------------------------------------------------------------------- fast path
def cached_help(command: str, argv: list[str]) -> str | None:
    """The help `psft COMMAND ARGV` asks for, from a fresh spec (shipped or cached), or None (no help asked
    for, or no fresh spec: then the command builds its parser)."""
    if not set(HELP_FLAGS) & set(argv):
        return None
    for directory in (SHIPPED, _cache_dir()):
        spec = _load(directory / f"{command}.json")
        if spec is not None and is_fresh(spec):
            return render(spec, "--help-all" in argv)
    return None


def fingerprint(classes: list[tuple[str, str]]) -> dict[str, Any]:
    """What the help depends on: the versions of psft and of the upstream packages, and the source of the
    psft classes `(module, qualname)` that declare options, and of this module (the rendering)."""
    from importlib.metadata import PackageNotFoundError, version

    import psft

    versions = {"psft": psft.__version__}
    for name in UPSTREAM:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    sources = {f"{module}.{qualname}": _class_hash(module, qualname) for module, qualname in classes}
    sources["psft.cli.help"] = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()
    return {"versions": versions, "classes": classes, "sources": sources}


def is_fresh(spec: dict[str, Any]) -> bool:
    """Whether a spec still describes the installed packages and psft's source."""
    recorded = spec.get("fingerprint") or {}
    classes = [tuple(c) for c in recorded.get("classes", [])]
    return recorded == json.loads(json.dumps(fingerprint(classes)))


def _class_hash(module: str, qualname: str) -> str | None:
    """sha1 of a class's source, read with `ast` (importing its module would import torch); None if gone."""
    root = Path(__file__).parents[2]
    relative = Path(*module.split("."))
    path = next((p for p in (root / f"{relative}.py", root / relative / "__init__.py") if p.is_file()), None)
    if path is None:
        return None
    source = path.read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == qualname:
            lines = source.splitlines()[node.lineno - 1 : node.end_lineno]
            return hashlib.sha1("\n".join(lines).encode()).hexdigest()
    return None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "psft" / "help"


def _command(parser: argparse.ArgumentParser) -> str:
    return parser.prog.split()[-1]  # "psft train" -> "train"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none there, or unreadable: build the parser instead
        return None


def _save(path: Path, spec: dict[str, Any]) -> None:
    """Best effort: a read-only home only costs the next `--help` its speed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(spec), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass


# commands whose parser is built on TRL's dataclasses: module with `make_parser()` and its usage line
SPEC_COMMANDS = {"train": "psft.cli.train", "rl": "psft.cli.rl", "dpo": "psft.cli.dpo"}


def write_shipped(directory: Path = SHIPPED) -> list[Path]:
    """Write the spec of every TRL-based command into `directory` (the package's, by default)."""
    import importlib

    written = []
    for command, module_name in SPEC_COMMANDS.items():
        module = importlib.import_module(module_name)
        spec = help_spec(module.make_parser(), module.USAGE)
        path = directory / f"{command}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec, indent=0, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # python -m psft.cli.help: refresh the shipped specs after changing an option
    for written_path in write_shipped(Path(sys.argv[1]) if len(sys.argv) > 1 else SHIPPED):
        print(f"wrote {written_path}")
