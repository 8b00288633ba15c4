"""The contracts of the private upstream hooks psft overrides (psft._compat.HOOKS, psft.core.hooks): they hold on the
installed versions, and a change is refused in one line naming the supported range."""

import functools

import pytest
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer

from psft import _compat
from psft.errors import UserError


def test_the_installed_upstream_meets_every_hook_contract():
    assert _compat.hook_problems() == []
    _compat.check_hooks()


def test_every_private_hook_psft_overrides_is_listed_with_its_contract():
    from psft.core.hooks import UpstreamHooks

    overridden = {n for n in vars(UpstreamHooks) if not n.startswith("__") and callable(vars(UpstreamHooks)[n])}
    listed = {path.rsplit(".", 1)[1] for path in set(_compat.HOOKS) - _compat.CALLED_ONLY}
    assert listed <= overridden  # each listed contract has its override ...
    from transformers import Trainer
    from trl import SFTTrainer

    upstream = {n for n in overridden if hasattr(Trainer, n) or hasattr(SFTTrainer, n)}
    assert upstream == listed  # ... and each override of an upstream method has its contract


def test_a_changed_signature_is_refused_in_one_line_naming_the_range(monkeypatch):
    monkeypatch.setitem(_compat.HOOKS, "transformers.Trainer.get_batch_samples", ("epoch_iterator", "n"))
    with pytest.raises(UserError) as err:
        _compat.check_hooks()
    message = str(err.value)
    assert "\n" not in message
    assert "get_batch_samples" in message and _compat.SUPPORTED["transformers"] in message
    monkeypatch.setenv(_compat.ALLOW_ENV, "1")
    _compat.check_hooks()  # the escape hatch, as for the version check


def test_training_values_names_the_seven_tuple_and_refuses_another_shape():
    values = _compat.training_values((3, 10, 80, 240, 8, 20, 30))
    assert (values.num_train_epochs, values.updates_per_epoch, values.max_steps) == (3, 10, 30)
    assert tuple(values._replace(max_steps=60)) == (3, 10, 80, 240, 8, 20, 60)
    with pytest.raises(UserError, match="returned 6 values"):
        _compat.training_values((3, 10, 80, 240, 8, 30))


def test_a_skipped_step_reaches_accelerates_flag():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = Accelerator(cpu=True).prepare(torch.optim.SGD([param], lr=0.1))
    assert isinstance(optimizer, AcceleratedOptimizer)
    assert _compat.can_mark_skipped(optimizer)
    _compat.set_step_skipped(optimizer, True)
    assert optimizer.step_was_skipped
    _compat.set_step_skipped(optimizer, False)
    assert not optimizer.step_was_skipped
    plain = torch.optim.SGD([param], lr=0.1)
    _compat.set_step_skipped(plain, True)  # no flag there: nothing to set
    assert not _compat.can_mark_skipped(plain)


def test_the_fused_head_is_found_under_wrappers():
    def _fused_forward(*args, **kwargs):
        return None

    @functools.wraps(_fused_forward)
    def wrapper(*args, **kwargs):
        return _fused_forward(*args, **kwargs)

    assert _compat.has_fused_head(wrapper)
    assert not _compat.has_fused_head(lambda: None)
