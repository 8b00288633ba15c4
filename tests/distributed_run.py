"""Train a tiny model on 1 or more CPU processes and save its final parameters (launched by the tests).

torchrun --standalone --nproc_per_node 2 tests/distributed_run.py OUT.pt --per_device_train_batch_size 4 ...
"""

import sys
from pathlib import Path

import torch
import yaml
from trainer_support import make_trainer, params, prompt_completion_data


def main(out: str, flags: list[str]) -> None:
    # `--key value` pairs, typed like YAML scalars (4 -> int, 0.01 -> float, psft -> str)
    overrides = {
        key.removeprefix("--"): yaml.safe_load(value)
        for key, value in zip(flags[::2], flags[1::2], strict=True)
    }
    torch.set_num_threads(1)
    trainer = make_trainer(Path(out).parent / "run", data=prompt_completion_data(64), **overrides)
    trainer.train()
    if trainer.accelerator.is_main_process:
        logs = [log for log in trainer.state.log_history if "nll" in log]
        torch.save({"params": params(trainer), "logs": logs, "world": trainer.accelerator.num_processes}, out)
    # leave the process group cleanly: a gloo thread still running at exit can abort the process
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
