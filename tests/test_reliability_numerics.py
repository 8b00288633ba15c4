"""Non-finite steps are skipped for real (weights, AdamW state and LR schedule untouched), counted, and capped;
the log-ratio clamp keeps extreme old log-probs finite end to end."""

import math

import pytest
import torch
from trainer_support import NaNAt, Snapshots, make_trainer

from psft import PSFTTrainer
from psft.errors import UserError


class ExtremeOld(PSFTTrainer):
    """Old log-probs shifted by +-1000 nats: log-ratios far outside the clamp."""

    shift = 1000.0

    def _old_log_probs(self, micro_batch):
        return super()._old_log_probs(micro_batch) - self.shift


def test_a_nan_loss_skips_that_step_without_touching_weights_adam_or_the_lr_schedule(tmp_path):
    snapshots = Snapshots()
    NaNAt.nan_steps = (2,)
    trainer = make_trainer(
        tmp_path,
        trainer_cls=NaNAt,
        callbacks=[snapshots],
        max_steps=5,
        mini_batches_per_rollout=2,
        gradient_accumulation_steps=2,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
    )
    trainer.train()
    assert trainer.state.global_step == 5
    before, after = snapshots.by_step[2], snapshots.by_step[3]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the NaN step changed nothing
    assert any(not torch.equal(snapshots.by_step[3][k], snapshots.by_step[4][k]) for k in before)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # AdamW took 4 real steps, and the scheduler advanced 4 times
    steps = {int(state["step"]) for state in trainer.optimizer.state.values()}
    assert steps == {4}
    assert trainer.lr_scheduler.last_epoch == 4
    logs = [log for log in trainer.state.log_history if "nonfinite_skipped" in log]
    assert [log["nonfinite_skipped"] for log in logs] == [0, 0, 1, 1, 1]


def test_non_finite_steps_in_a_row_stop_the_run_with_a_clear_error(tmp_path):
    NaNAt.nan_steps = (1, 2, 3, 4, 5)
    trainer = make_trainer(tmp_path, trainer_cls=NaNAt, max_steps=8, max_nonfinite_steps=3)
    with pytest.raises(UserError, match=r"step 4: 3 optimizer steps in a row had a non-finite loss"):
        trainer.train()
    assert trainer.run_state.nonfinite_skipped == 3


@pytest.mark.parametrize("shift", [1000.0, -1000.0])
def test_extreme_old_log_probs_stay_finite_through_the_clamp(tmp_path, shift):
    ExtremeOld.shift = shift
    trainer = make_trainer(tmp_path, trainer_cls=ExtremeOld, max_steps=4, mini_batches_per_rollout=4)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "ratio/max" in log]
    assert all(math.isfinite(log["loss"]) and math.isfinite(log["grad_norm"]) for log in logs)
    assert trainer.run_state.nonfinite_skipped == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    late = logs[1:]  # steps 2..4 carry the shifted old log-probs
    if shift > 0:  # log-ratio +1000 clamped to +20: ratio e^20, every token clipped
        assert all(log["ratio/max"] == pytest.approx(math.exp(20.0), rel=1e-4) for log in late)
        assert all(log["clip_ratio/high"] == 1.0 for log in late)
    else:  # log-ratio -1000 clamped to -20
        assert all(log["ratio/max"] == pytest.approx(math.exp(-20.0), rel=1e-4) for log in late)
