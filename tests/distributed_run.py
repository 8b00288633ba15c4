"""Train a tiny model on 1 or more CPU processes and save its final parameters (launched by the tests).

torchrun --standalone --nproc_per_node 2 tests/distributed_run.py OUT.pt --engine fsdp2 --per_device_train_batch_size 4 ...

`--engine` (ddp, fsdp2, zero2, zero3; default ddp) picks the distributed engine (`engines.py`); the saved record
says which one the Trainer really used, so a test can refuse a silent fallback to DDP.
"""

import sys
from pathlib import Path

import torch
import yaml
from engines import ENGINES
from torch.distributed.tensor import DTensor
from trainer_support import make_trainer, prompt_completion_data


def engine_in_use(trainer) -> str:
    """What the trainer really runs: fsdp2 (with DTensor parameters), zero2/zero3, ddp or single."""
    if trainer.is_fsdp_enabled:
        sharded = all(isinstance(p, DTensor) for p in trainer.model.parameters())
        return f"fsdp{trainer.accelerator.state.fsdp_plugin.fsdp_version}" + ("" if sharded else "-unsharded")
    if trainer.is_deepspeed_enabled:
        return f"zero{trainer.accelerator.state.deepspeed_plugin.zero_stage}"
    return "ddp" if trainer.accelerator.num_processes > 1 else "single"


def full_params(trainer) -> dict:
    """Every parameter, gathered whole on every process (FSDP2 DTensors, ZeRO-3 partitions)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return {k: v.detach().clone() for k, v in model.named_parameters()}
    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
        for k, v in model.named_parameters()
    }


def main(out: str, flags: list[str]) -> None:
    # `--key value` pairs, typed like YAML scalars (4 -> int, 0.01 -> float, psft -> str)
    overrides = {
        key.removeprefix("--"): yaml.safe_load(value)
        for key, value in zip(flags[::2], flags[1::2], strict=True)
    }
    engine = overrides.pop("engine", "ddp")
    torch.set_num_threads(1)
    trainer = make_trainer(
        Path(out).parent / f"run-{Path(out).stem}",
        data=prompt_completion_data(64),
        **ENGINES[engine],
        **overrides,
    )
    trainer.train()
    params = full_params(trainer)
    if trainer.accelerator.is_main_process:
        logs = [log for log in trainer.state.log_history if "nll" in log]
        record = {"params": params, "logs": logs, "world": trainer.accelerator.num_processes}
        torch.save({**record, "engine": engine_in_use(trainer)}, out)
    # leave the process group cleanly: a gloo thread still running at exit can abort the process
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
