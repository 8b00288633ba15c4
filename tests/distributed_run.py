"""Train tiny models on 1 or more CPU processes and save what the tests compare (launched by the tests).

    torchrun --standalone --nproc_per_node 2 tests/distributed_run.py OUT.pt SPEC.json

SPEC is `{"engine": "fsdp2", "runs": {"name": {training-argument overrides}, ...}}` (`records`: the number of
training records, default 64; `nan_steps`: steps whose loss is made NaN; `tied`: a model whose output head is its
input embedding): the runs are trained one after the other in the same processes (one start-up for all of them)
with the engine of `engines.py` (ddp, fsdp2, zero2, zero3). OUT gets, per run, the final parameters gathered
whole, the logging-step entries, the precomputed reference table if there is one, and the engine the Trainer
really used, so a test can refuse a silent fallback to DDP.
"""

import json
import sys
from pathlib import Path

import torch
from engines import ENGINES
from torch.distributed.tensor import DTensor
from trainer_support import NaNAt, make_trainer, prompt_completion_data
from transformers import TrainerCallback

from psft.core.reference import REFERENCE_FILE


def engine_in_use(trainer) -> str:
    """What the trainer really runs: fsdp2 (with DTensor parameters), zero2/zero3, ddp or single."""
    if trainer.is_fsdp_enabled:
        sharded = all(isinstance(p, DTensor) for p in trainer.model.parameters())
        return f"fsdp{trainer.accelerator.state.fsdp_plugin.fsdp_version}" + ("" if sharded else "-unsharded")
    if trainer.is_deepspeed_enabled:
        stage = trainer.accelerator.state.deepspeed_plugin.zero_stage
        if stage == 3:  # every parameter partitioned: each process holds a part (`ds_tensor`) of `ds_numel`
            world = trainer.accelerator.num_processes
            params = list(trainer.accelerator.unwrap_model(trainer.model).parameters())
            sharded = all(
                hasattr(p, "ds_numel") and not p.ds_persist and p.ds_tensor.numel() < p.ds_numel
                for p in params
            )
            return "zero3" + ("" if sharded and world > 1 else "-unsharded")
        return f"zero{stage}"
    return "ddp" if trainer.accelerator.num_processes > 1 else "single"


def full_params(trainer) -> dict:
    """Every parameter in float32, gathered whole on every process (FSDP2 DTensors, ZeRO-3 partitions)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return {k: v.detach().float().clone() for k, v in model.named_parameters()}
    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().float().clone()
        for k, v in model.named_parameters()
    }


class StepSnapshots(TrainerCallback):
    """Whole parameters at the start of every optimizer step."""

    def __init__(self):
        self.trainer, self.by_step = None, {}

    def on_step_begin(self, args, state, control, **kwargs):
        self.by_step[state.global_step] = full_params(self.trainer)


def train(out_dir: Path, engine: str, overrides: dict) -> dict:
    NaNAt.nan_steps = tuple(overrides.pop("nan_steps", ()))
    records = overrides.pop("records", 64)
    tied = overrides.pop("tied", False)
    snapshots = StepSnapshots()
    trainer = make_trainer(
        out_dir,
        data=prompt_completion_data(records),
        trainer_cls=NaNAt,
        callbacks=[snapshots] if NaNAt.nan_steps else None,
        tied=tied,
        **ENGINES[engine],
        **overrides,
    )
    snapshots.trainer = trainer
    trainer.train()
    if tied:  # the engine kept one shared tensor (it may wrap or shard it, but never split it in two)
        model = trainer.accelerator.unwrap_model(trainer.model)
        assert model.lm_head.weight is model.get_input_embeddings().weight, f"{engine} untied the embeddings"
    table = out_dir / "out" / REFERENCE_FILE
    return {
        "snapshots": snapshots.by_step,
        "nonfinite_skipped": trainer.run_state.nonfinite_skipped,
        "lr_scheduler_steps": trainer.lr_scheduler.scheduler.last_epoch
        if hasattr(trainer.lr_scheduler, "scheduler")
        else trainer.lr_scheduler.last_epoch,
        "params": full_params(trainer),
        "logs": [log for log in trainer.state.log_history if "nll" in log],
        "world": trainer.accelerator.num_processes,
        "engine": engine_in_use(trainer),
        "reference": torch.load(table) if table.is_file() else None,
    }


def main(out: str, spec: str) -> None:
    spec = json.loads(spec)
    torch.set_num_threads(1)
    records = {
        name: train(Path(out).parent / f"{Path(out).stem}-{name}", spec["engine"], overrides)
        for name, overrides in spec["runs"].items()
    }
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        torch.save(records, out)
    # leave the process group cleanly: a gloo thread still running at exit can abort the process
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
