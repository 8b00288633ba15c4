"""A tiny PSFT run for the resume tests, run as a subprocess:
`python resume_run.py OUT [--kill-saving STEP | --sigterm-at STEP] [--resume] [--tied]`.

With `--kill-saving STEP` the process SIGKILLs itself in the middle of writing checkpoint STEP (model written,
optimizer not yet). With `--sigterm-at STEP` rank 0 is sent SIGTERM (as a scheduler would) when optimizer step STEP
begins (0-based): the run checkpoints at that step's end and exits with code 143 and the one-line message. The final model is saved to OUT/final. With `--engine` (fsdp2, zero3, ...; launched by torchrun on
several processes) rank 0 kills itself, the launcher stops the others, and the final parameters, gathered whole,
go to OUT/final.pt instead.
"""

import argparse
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from distributed_run import full_params  # noqa: E402
from engines import ENGINES  # noqa: E402
from trainer_support import TOKENIZER, common_args, prompt_completion_data  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from psft import PSFTConfig, PSFTTrainer  # noqa: E402
from psft.core.run_state import Preempted  # noqa: E402
from psft.data.tiny import make_tiny_llama  # noqa: E402


class KilledWhileSaving(PSFTTrainer):
    kill_at = -1

    def _save_optimizer_and_scheduler(self, output_dir):
        if self.state.global_step == self.kill_at and self.accelerator.is_main_process:
            os.kill(os.getpid(), signal.SIGKILL)
        super()._save_optimizer_and_scheduler(output_dir)


class SigtermAt(TrainerCallback):
    """Sends this process SIGTERM when optimizer step `step` begins, on the main process only (the others learn of
    it at the step boundary)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step and state.is_world_process_zero:
            os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--kill-saving", type=int, default=-1)
    parser.add_argument("--sigterm-at", type=int, default=-1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--engine", choices=sorted(ENGINES))
    parser.add_argument(
        "--tied", action="store_true", help="a model whose output head is its input embedding"
    )
    cli = parser.parse_args()
    torch.set_num_threads(1)
    if cli.engine is None:
        # 40 records / batch 4 = 10 steps an epoch; K = 4: rollouts [0,4) [4,8) [8,10) [10,14) [14,16)
        run = dict(max_steps=16, num_train_epochs=2, mini_batches_per_rollout=4, learning_rate=2e-2)
    else:
        # 2 processes x batch 2: 10 steps an epoch; K = 4: rollouts [0,4) [4,8); checkpoint 3 is inside the first
        run = dict(max_steps=8, mini_batches_per_rollout=4, learning_rate=2e-2, per_device_train_batch_size=2)
        run.update(ENGINES[cli.engine])
    args = PSFTConfig(
        **common_args(output_dir=cli.out, save_strategy="steps", save_steps=3, logging_steps=4, **run)
    )
    KilledWhileSaving.kill_at = cli.kill_saving
    trainer = KilledWhileSaving(
        model=make_tiny_llama(TOKENIZER, seed=0, tie_word_embeddings=cli.tied),
        args=args,
        train_dataset=prompt_completion_data(40),
        processing_class=TOKENIZER,
        callbacks=[SigtermAt(cli.sigterm_at)] if cli.sigterm_at >= 0 else None,
    )
    try:
        trainer.train(resume_from_checkpoint=True if cli.resume else None)
    except Preempted as err:
        print(f"preempted: {err}", file=sys.stderr)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        sys.exit(143)
    if cli.engine is None:
        if cli.tied:  # the checkpoint stores the shared tensor once; a resume must not leave two
            model = trainer.model
            assert model.lm_head.weight is model.get_input_embeddings().weight, "the tie was lost"
        trainer.save_model(os.path.join(cli.out, "final"))
        return
    params = full_params(trainer)
    if trainer.accelerator.is_main_process:
        torch.save(params, os.path.join(cli.out, "final.pt"))
    torch.distributed.barrier()
    # Every result is saved. Exit without interpreter teardown: once in CI (2 loaded cores), a resumed ZeRO-3 run
    # with partitioned parameters aborted at teardown ("terminate called without an active exception", SIGABRT)
    # after final.pt was written; the test is about the parameters, not about DeepSpeed's exit on gloo.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
