"""Command-line arguments of the `psft` commands built on `trl.TrlParser`: flags over a YAML `--config` file.

As `TrlParser.parse_args_and_config` (the YAML sets the defaults, flags override them, `env:` is exported), but
every mistake is a `UserError`: an unknown field or flag names the closest known one, a YAML value goes through
its flag's type and choices (YAML reads `1e-3` as text), `null` only where the field allows None.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import typing
import warnings
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from psft.errors import UserError, did_you_mean, first_line

if TYPE_CHECKING:
    from trl import TrlParser


class OneLineErrors:
    """Mixin for argparse parsers: a mistake raises `UserError` (printed as one line by `psft.errors.run_command`)
    instead of printing the whole usage and exiting; an unknown option names the closest known one."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            name = message[len(prefix) :].split()[0].split("=")[0]
            message += did_you_mean(name, _options(self))
        raise UserError(message)


class ArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """The argument parser of every `psft` command that does not read TRL's dataclasses (eval, compare, demo,
    convert): argparse whose mistakes are one-line `UserError`s."""


@functools.cache
def _config_parser_class() -> type:
    from trl import TrlParser  # imported here: `psft eval --help` must not pay for TRL

    class ConfigParser(OneLineErrors, TrlParser):
        """TRL's parser (flags over dataclasses) with one-line errors; read with `parse_config_and_flags`."""

    return ConfigParser


def config_parser(dataclass_types: tuple[type, ...], prog: str) -> TrlParser:
    """The parser of a command built on TRL's dataclasses (`psft train`, `psft rl`, `psft dpo`): a `TrlParser`
    whose mistakes are one-line `UserError`s."""
    return _config_parser_class()(dataclass_types, prog=prog)


def parse_config_and_flags(parser: TrlParser, argv: list[str]) -> tuple[Any, ...]:
    """Parse flags over `--config FILE.yaml` (as `TrlParser.parse_args_and_config`, `env:` included). An unknown
    field (in either) names the closest known one; a YAML value goes through its flag's type and choices."""
    if not isinstance(parser, OneLineErrors):
        raise TypeError("parse_config_and_flags needs a parser from psft.cli.args.config_parser")
    argv = [
        part for item in argv for part in (item.split("=", 1) if item.startswith("--config=") else [item])
    ]
    config: dict[str, Any] = {}
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise UserError("--config needs a YAML file")
        config = _read_config(parser, argv[index + 1])
        del argv[index : index + 2]
    try:
        with warnings.catch_warnings():
            if not any("checkpointing" in item for item in argv + list(config)):
                # TRL 1.16's own default for transformers 5.24's renamed field, not the user's doing
                warnings.filterwarnings("ignore", "`gradient_checkpointing` is deprecated", FutureWarning)
            parser.set_defaults_with_config(**config)
            *values, remaining = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except UserError:
        raise
    except (ValueError, TypeError) as err:  # a field's value refused by its dataclass (TrainingArguments...)
        raise UserError(first_line(err)) from None
    for item in remaining:
        if item.startswith("-"):
            name = item.split("=", 1)[0]
            raise UserError(f"unknown option {name}{did_you_mean(name, _options(parser))}")
    if remaining:
        raise UserError(f"unexpected argument {remaining[0]!r} (options are --name value)")
    return tuple(values)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


def _read_config(parser: TrlParser, path: str) -> dict[str, Any]:
    """A YAML config's fields, each checked like its command-line flag; its `env:` mapping is exported."""
    if not os.path.isfile(path):
        raise UserError(f"--config: no such file {path}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            config = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid YAML: {first_line(err)}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: must be a YAML mapping of field: value, got {type(config).__name__}")
    env = config.pop("env", {})
    if not isinstance(env, dict):
        raise UserError(f"{path}: env must be a mapping of variable: value")
    options = _options(parser)
    nullable = _nullable_fields(parser)
    checked = {}
    for key, value in config.items():
        action = options.get(f"--{key}")
        if action is None:
            fields = [option[2:] for option in options if option.startswith("--")]
            raise UserError(f"{path}: unknown field {key!r}{did_you_mean(str(key), fields)}")
        if value is None and not nullable.get(action.dest, True):
            raise UserError(f"{path}: {key}: null is not allowed; give a value or remove the field")
        checked[action.dest] = _typed(action, value, f"{path}: {key}")
    os.environ.update({str(k): str(v) for k, v in env.items()})
    return checked


def _nullable_fields(parser: TrlParser) -> dict[str, bool]:
    """Whether each dataclass field accepts None (YAML `null`), from its type hint."""
    nullable = {}
    for dataclass_type in parser.dataclass_types:
        try:
            hints = typing.get_type_hints(dataclass_type)
        except (NameError, TypeError):  # an unresolvable annotation: accept anything for that class
            continue
        for field in dataclasses.fields(dataclass_type):
            hint = hints.get(field.name)
            nullable[field.name] = hint is None or hint is Any or type(None) in typing.get_args(hint)
    return nullable


def _typed(action: argparse.Action, value: Any, where: str) -> Any:
    """A YAML scalar converted as argparse converts the flag's string (YAML reads `1e-3` as text, for one)."""
    if value is None or isinstance(value, (list, dict)) or action.type is None:
        return value
    try:
        converted = action.type(str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        kind = getattr(action.type, "__name__", "value")
        raise UserError(f"{where}: {value!r} is not a valid {kind}") from None
    if action.choices is not None and converted not in action.choices:
        raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return converted
