"""The one home of psft's upstream compatibility: the supported version ranges and their check, plus any fix
a new upstream release needs (each with a test that would have caught the break).

The ranges are the ones CI runs (pyproject.toml's dependencies; constraints/lowest.txt is the full suite at the
lower bounds, constraints/latest.txt a fast subset at the newest releases); tests/test_compat.py keeps them equal
to pyproject.toml. The check reads installed versions from package metadata only (no import of torch or
transformers), so it costs milliseconds and runs before any model or data loads.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

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
