"""The command-line side shared by `psft rl` and `psft dpo`: the chain's --checkpoints pairs and one stage
command's parse (YAML + flags, help, threads, model loading options)."""

from __future__ import annotations

from typing import Any

from psft.errors import UserError


def parse_checkpoints(pairs: list[str]) -> dict[str, str]:
    """`["sft=runs/sft", "psft=runs/psft"]` -> `{"sft": "runs/sft", "psft": "runs/psft"}`."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UserError(f"checkpoints: expected NAME=PATH, got {pair!r}")
        if name in out:
            raise UserError(f"checkpoints: name {name!r} given twice")
        out[name] = path
    return out


def parse_stage_command(parser: Any, argv: list[str], usage: str) -> tuple[Any, Any, Any] | None:
    """The start shared by `psft rl` and `psft dpo`: help (None when it was printed), flags over the YAML
    (`psft.cli.args`), the thread choice, and `ModelConfig`'s loading options put in the stage config's
    `model_init_kwargs` (the config's own entries win). Returns (stage arguments, stage config, ModelConfig)."""
    from psft.cli.args import parse_config_and_flags
    from psft.cli.help import show_help
    from psft.core.threads import configure_threads

    if show_help(argv, parser, usage):
        return None
    stage_args, config, model_args = parse_config_and_flags(parser, argv)
    configure_threads()
    config.model_init_kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    ) | (config.model_init_kwargs or {})
    if not stage_args.checkpoints and not model_args.model_name_or_path:
        raise UserError(
            "no model: set model_name_or_path (a directory, psft/tiny-base or a hub name) or checkpoints"
        )
    return stage_args, config, model_args
