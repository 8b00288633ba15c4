"""Which distributed engine a run really uses, said before training, and loudly when it is not the one asked for.

accelerate decides the engine from the launcher's environment (`ACCELERATE_USE_FSDP`, `ACCELERATE_USE_DEEPSPEED`)
and the Trainer's arguments (`fsdp`, `deepspeed`), but falls back to DDP without a word in some cases: FSDP is only
switched on for GPU-like devices (accelerate 1.15, `AcceleratorState.__init__`), so a CPU run given an FSDP config
trains with DDP, holds a full model per process and writes DDP checkpoints. `check_engine` names the engine in use
and warns when FSDP or DeepSpeed was requested but the run ended up elsewhere.
"""

from __future__ import annotations

import os
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)


def engine_in_use(trainer: Any) -> str:
    """The engine `trainer` trains with: "FSDP2", "FSDP1", "DeepSpeed ZeRO-N", "DDP" or "single process"."""
    state = trainer.accelerator.state
    if trainer.is_fsdp_enabled:
        return f"FSDP{getattr(state.fsdp_plugin, 'fsdp_version', 1)}"
    if trainer.is_deepspeed_enabled:
        return f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    return "DDP" if trainer.accelerator.num_processes > 1 else "single process"


def engine_requested(args: Any) -> str | None:
    """The engine the training arguments or the accelerate launcher ask for: "FSDP", "DeepSpeed" or None."""
    if args.deepspeed or _env_flag("ACCELERATE_USE_DEEPSPEED"):
        return "DeepSpeed"
    if args.fsdp or getattr(args, "fsdp_plugin_args", None) or _env_flag("ACCELERATE_USE_FSDP"):
        return "FSDP"
    return None


def check_engine(trainer: Any) -> str:
    """Print the engine in use (main process), or warn on every process when it is not the one requested."""
    in_use, requested = engine_in_use(trainer), engine_requested(trainer.args)
    processes = trainer.accelerator.num_processes
    device = trainer.accelerator.device.type
    if requested is not None and not in_use.startswith(requested):
        reason = (
            "accelerate enables FSDP only on GPU-like devices, not on CPU processes"
            if requested == "FSDP" and device == "cpu"
            else "accelerate did not enable it (check the launcher and its config)"
        )
        logger.warning(
            f"{requested} was requested but this run trains with {in_use} on {processes} {device} process(es): "
            f"{reason}. Every process holds a full copy of the model and checkpoints are not {requested} ones."
        )
    else:
        trainer.accelerator.print(f"Training with {in_use} on {processes} {device} process(es)")
    return in_use


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")
