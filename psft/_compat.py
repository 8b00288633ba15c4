"""The one home of psft's upstream compatibility: the supported version ranges and their check, plus any fix
a new upstream release needs (each with a test that would have caught the break).

The ranges are the ones CI runs (pyproject.toml's dependencies; constraints/lowest.txt is the full suite at the
lower bounds, constraints/latest.txt a fast subset at the newest releases); tests/test_compat.py keeps them equal
to pyproject.toml. The check reads installed versions from package metadata only (no import of torch or
transformers), so it costs milliseconds and runs before any model or data loads.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NamedTuple

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from psft.errors import UserError

# distribution name -> the range psft supports (its pyproject.toml requirement) and why there is an upper bound
SUPPORTED: dict[str, str] = {
    "torch": ">=2.13,<2.16",
    "transformers": ">=5.24,<5.26",
    "trl": ">=1.16,<1.17",
    "accelerate": ">=1.16,<2",
}

# set to 1 to train with an unsupported version anyway (at your own risk: the schedule overrides private hooks)
ALLOW_ENV = "PSFT_ALLOW_UNSUPPORTED"


def installed_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def unsupported(versions: dict[str, str | None] | None = None) -> list[str]:
    """One message per package of SUPPORTED whose installed version (or the given one) is outside its range.

    A local build tag (`2.13.0+cpu`) and a pre-release of a supported version count as that version."""
    problems = []
    for name, spec in SUPPORTED.items():
        found = installed_version(name) if versions is None else versions.get(name)
        if found is None:
            problems.append(f"{name} is not installed; psft supports {name}{spec}")
            continue
        if Version(Version(found).base_version) not in SpecifierSet(spec):
            problems.append(f"{name} {found} is installed; psft supports {name}{spec}")
    return problems


def check_versions(versions: dict[str, str | None] | None = None) -> None:
    """Raise a one-line UserError when torch, transformers, TRL or accelerate is outside the supported range.

    Called before any training starts (`psft train/compare/demo/rl/dpo` and `PSFTTrainer.__init__`), so an
    unsupported upstream fails with the range and the installed version, not deep inside a private hook.
    `PSFT_ALLOW_UNSUPPORTED=1` skips the check."""
    if os.environ.get(ALLOW_ENV, "") not in ("", "0"):
        return
    problems = unsupported(versions)
    if problems:
        raise UserError(
            "; ".join(problems)
            + f" (pip install 'psft' resolves a supported set; {ALLOW_ENV}=1 tries this one anyway)"
        )


# transformers 5.25 turns Hugging Face Hub kernels on by default when the `kernels` package is installed (which
# transformers 5.25 requires): every model is "kernelized" at load, with inference-mode kernels under eval() and
# training-mode kernels under train(). On a CUDA device that means (1) a download from the hub at load, which
# fails offline, and (2) PSFT's old-policy pass (eval mode, no grad) and its training step (train mode) running
# different kernels, so an unchanged model's ratio is no longer exactly 1 and the trust region clips noise.
# On a CPU no kernel is mapped (no effect). psft keeps transformers' own layers unless the user opts in.
HUB_KERNELS_ENV = "USE_HUB_KERNELS"


def keep_hub_kernels_off() -> None:
    """Default `USE_HUB_KERNELS=NO` for the models this process loads; an explicit user setting wins."""
    os.environ.setdefault(HUB_KERNELS_ENV, "NO")


def hub_kernels_wanted() -> bool:
    """Whether `USE_HUB_KERNELS` asks for hub kernels, read as transformers reads it (unset: no, psft's default)."""
    return os.environ.get(HUB_KERNELS_ENV, "NO").lower() in ("true", "1", "y", "yes", "on")


def unkernelize(model: Any) -> bool:
    """Undo the hub kernelization transformers 5.25+ applied to a model loaded before psft set its default (the
    user's own `from_pretrained`, then `PSFTTrainer(model=...)`), unless `USE_HUB_KERNELS` asks for kernels.
    Left kernelized, such a model re-kernelizes at every `train()`/`eval()` switch, which raises once the
    variable is NO, and its two modes would run different kernels (the ratio at an unchanged model off 1).
    Returns whether it reset anything. `reset_kernels` is transformers' public way back to its own layers; it
    re-kernelizes with an empty mapping (no hub access) but refuses while the variable is NO (5.25), so the
    variable is lifted for that call alone."""
    if hub_kernels_wanted() or not getattr(model, "use_kernels", False):
        return False
    setting = os.environ.get(HUB_KERNELS_ENV)
    os.environ[HUB_KERNELS_ENV] = "YES"
    try:
        model.reset_kernels()
    finally:
        if setting is None:
            del os.environ[HUB_KERNELS_ENV]
        else:
            os.environ[HUB_KERNELS_ENV] = setting
    return True


# ------------------------------------------------------------------------------- private upstream hooks
# psft overrides private transformers / TRL hooks (all in psft/core/hooks.py) and reads two private names
# (accelerate's `_is_overflow`, TRL's `_fused_forward`). Each contract below is what psft relies on, as of
# transformers 5.24, TRL 1.16 and accelerate 1.16; `check_hooks()` verifies the signatures and names when
# psft.core.hooks is imported, so an upstream release that changes one fails with one line naming the supported
# range instead of training wrongly. The hooks call the adapters below rather than touching the private names.
HOOKS: dict[str, tuple[str, ...]] = {
    # -> 7-tuple (num_train_epochs, num_update_steps_per_epoch, num_examples, num_train_samples,
    #    total_train_batch_size, steps_in_epoch, max_steps); psft scales the step counts by rollout_epochs
    #    (`training_values`).
    "transformers.Trainer.set_initial_training_values": ("args", "dataloader"),
    # called once per optimizer step -> (micro-batches, num_items_in_batch); psft hands out the rollout's next
    # mini-batch instead of drawing `num_batches` from the iterator, and counts its loss tokens.
    "transformers.Trainer.get_batch_samples": ("epoch_iterator", "num_batches", "device"),
    # moves a micro-batch to the device; under DeepSpeed (transformers 5.23-5.24) it also casts every floating input
    # to the engine's dtype: psft keeps the attached float32 old/reference log-probs out of that cast.
    "transformers.Trainer._prepare_inputs": ("inputs",),
    # called once per optimizer step after clipping and before optimizer.step(): psft vetoes a non-finite step.
    "transformers.Trainer._get_grad_norm": ("model", "grad_norm"),
    # _save_checkpoint writes <_get_output_dir(trial)>/checkpoint-<step>: psft stages it by redirecting the dir.
    "transformers.Trainer._get_output_dir": ("trial",),
    "transformers.Trainer._save_checkpoint": ("model", "trial"),
    # tokenizes the raw records: psft validates them before and counts the records truncation dropped after.
    "trl.SFTTrainer._prepare_dataset": (
        "dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name",
    ),
    # called unbound, not overridden (psft.stages.preference_eval): held-out pairs tokenized exactly as DPO trains
    # on them; reads only self._tokenizer and args.dataset_num_proc / max_length / truncation_mode.
    "trl.DPOTrainer._prepare_dataset": ("dataset", "processing_class", "args", "dataset_name"),
}
CALLED_ONLY = {"trl.DPOTrainer._prepare_dataset"}  # the contracts above that psft calls rather than overrides
# TRL's `add_fused_lm_head` replaces a model's forward with a function of this name (kept under functools.wraps
# and accelerate's wrappers): psft detects an installed fused head by it (psft.core.logprobs.ensure_fused_head).
FUSED_FORWARD = "_fused_forward"
# accelerate's `AcceleratedOptimizer.step_was_skipped` (read by the Trainer as
# `accelerator.optimizer_step_was_skipped` to hold the LR scheduler back) returns this attribute.
OVERFLOW_FLAG = "_is_overflow"


def hook_problems() -> list[str]:
    """What no longer matches the contracts above in the installed transformers / TRL / accelerate."""
    import inspect
    import types
    import typing

    from accelerate.optimizer import AcceleratedOptimizer
    from trl.trainer.utils import add_fused_lm_head

    problems = []
    for path, expected in HOOKS.items():
        module, owner, name = path.rsplit(".", 2)
        hook = getattr(getattr(importlib.import_module(module), owner), name, None)
        if hook is None:
            problems.append(f"{path} no longer exists")
            continue
        found = tuple(p for p in inspect.signature(hook).parameters if p != "self")
        if found != expected:
            problems.append(f"{path}({', '.join(found)}) changed (psft overrides ({', '.join(expected)}))")
    returned = inspect.signature(_trainer_hook("set_initial_training_values")).return_annotation
    if returned is not inspect.Signature.empty and len(typing.get_args(returned) or str(returned).split(",")) != 7:
        problems.append(f"Trainer.set_initial_training_values returns {returned} (psft reads a 7-tuple)")
    skipped = getattr(AcceleratedOptimizer, "step_was_skipped", None)
    if not isinstance(skipped, property) or OVERFLOW_FLAG not in skipped.fget.__code__.co_names:
        problems.append(f"accelerate's AcceleratedOptimizer.step_was_skipped no longer reads {OVERFLOW_FLAG}")
    nested = {c.co_name for c in add_fused_lm_head.__code__.co_consts if isinstance(c, types.CodeType)}
    if FUSED_FORWARD not in nested:
        problems.append(f"TRL's add_fused_lm_head no longer installs {FUSED_FORWARD}")
    return problems


def _trainer_hook(name: str) -> Any:
    from transformers import Trainer

    return getattr(Trainer, name)


def check_hooks() -> None:
    """Raise a one-line UserError when an overridden private hook changed upstream (skipped with
    PSFT_ALLOW_UNSUPPORTED=1, like the version check)."""
    if os.environ.get(ALLOW_ENV, "") not in ("", "0"):
        return
    problems = hook_problems()
    if problems:
        ranges = ", ".join(f"{n}{SUPPORTED[n]}" for n in ("transformers", "trl", "accelerate"))
        found = ", ".join(f"{n} {installed_version(n)}" for n in ("transformers", "trl", "accelerate"))
        raise UserError(
            f"{problems[0]}: psft supports {ranges} ({found} installed; {ALLOW_ENV}=1 tries anyway)"
        )


class TrainingValues(NamedTuple):
    """`Trainer.set_initial_training_values`' 7-tuple, by name (a tuple: the Trainer unpacks it as before)."""

    num_train_epochs: int
    updates_per_epoch: int
    num_examples: int
    num_train_samples: int
    total_train_batch_size: int
    steps_in_epoch: int | None
    max_steps: int


def training_values(values: tuple) -> TrainingValues:
    """The Trainer's step counts by name; one line naming the supported range if their shape changed."""
    if len(values) != len(TrainingValues._fields):
        raise UserError(
            f"transformers' Trainer.set_initial_training_values returned {len(values)} values (psft reads 7): "
            f"psft supports transformers{SUPPORTED['transformers']}"
        )
    return TrainingValues(*values)


def set_step_skipped(optimizer: Any, skipped: bool) -> None:
    """Tell accelerate (hence the Trainer's LR scheduler step) whether this optimizer step was skipped; no-op for an
    optimizer without the flag (DeepSpeed's engine decides itself)."""
    if getattr(optimizer, OVERFLOW_FLAG, None) is not None:
        setattr(optimizer, OVERFLOW_FLAG, skipped)


def can_mark_skipped(optimizer: Any) -> bool:
    """Whether `set_step_skipped` reaches accelerate's flag on this optimizer."""
    return getattr(optimizer, OVERFLOW_FLAG, None) is not None


def has_fused_head(forward: Any) -> bool:
    """Whether a model's forward (or one it wraps) is TRL's fused-LM-head forward."""
    forward = getattr(forward, "__func__", forward)
    while forward is not None:
        if getattr(getattr(forward, "__code__", None), "co_name", "") == FUSED_FORWARD:
            return True
        forward = getattr(forward, "__wrapped__", None)
    return False
