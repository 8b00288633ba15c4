"""Readable `--help` for the commands built on TRL's parser (`psft train`, `psft rl`).

TRL's parser lists every field of `TrainingArguments` (900 lines) in one group. `--help` prints psft's own
options (fields declared in psft's dataclasses) and the upstream ones most runs set; `--help-all` prints the
full list with psft's options first.
"""

from __future__ import annotations

import argparse
import dataclasses

# upstream (TRL / transformers) fields most runs set, in this order, shown by the short help when present
COMMON_FIELDS = (
    "model_name_or_path", "dataset_name", "output_dir", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps",
    "weight_decay", "max_grad_norm", "max_length", "assistant_only_loss", "completion_only_loss", "packing",
    "num_generations", "max_completion_length", "logging_steps", "eval_strategy", "save_strategy", "report_to",
    "fp16", "activation_checkpointing", "use_cpu", "dtype", "use_peft", "lora_r", "seed", "resume_from_checkpoint",
)  # fmt: skip


def own_fields(parser: argparse.ArgumentParser) -> list[str]:
    """Names of the fields declared in psft's own classes among the parser's dataclasses, in declaration order."""
    names: list[str] = []
    for dtype in getattr(parser, "dataclass_types", ()):
        for f in dataclasses.fields(dtype):
            owner = next((c for c in dtype.__mro__ if f.name in vars(c).get("__annotations__", {})), dtype)
            if owner.__module__.startswith("psft") and f.name not in names:
                names.append(f.name)
    return names


def _actions(parser: argparse.ArgumentParser, names: list[str] | tuple[str, ...]) -> list[argparse.Action]:
    by_dest = {a.dest: a for a in parser._actions}
    return [by_dest[n] for n in names if n in by_dest]


def show_help(argv: list[str], parser: argparse.ArgumentParser, usage: str, extra: str = "") -> bool:
    """Print help if `argv` asks for it and return True: `-h`/`--help` the short form, `--help-all` all options
    (psft's first). `extra` lists options the command reads itself (as `--name VALUE  help` lines)."""
    if "--help-all" in argv:
        parser.usage = usage
        _own_group_first(parser)
        parser.print_help()
        return True
    if not ({"-h", "--help"} & set(argv)):
        return False
    own = own_fields(parser)
    short = argparse.ArgumentParser(
        prog=parser.prog, usage=usage, add_help=False, formatter_class=parser.formatter_class
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
    if extra:
        text += "\n\nother options:\n" + extra.rstrip()
    print(
        f"{text}\n\nAll {total} options (every field of TRL's and transformers' configs): {parser.prog} --help-all"
    )
    return True


def _own_group_first(parser: argparse.ArgumentParser) -> None:
    """Move psft's own options into their own group, printed before the upstream ones."""
    actions = _actions(parser, own_fields(parser))
    for group in parser._action_groups:
        group._group_actions[:] = [a for a in group._group_actions if a not in actions]
    group = parser.add_argument_group("psft options")
    group._group_actions.extend(actions)
    parser._action_groups.remove(group)
    parser._action_groups.insert(0, group)
