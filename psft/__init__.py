"""psft: Proximal Supervised Fine-Tuning on the Hugging Face stack.

The public names load on first use, so `import psft.errors` or `psft --help` does not import torch or TRL.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "PSFTConfig": "psft.core.config",
    "PSFTTrainer": "psft.core.trainer",
    "LOSSES": "psft.core.losses",
    "LossOutput": "psft.core.losses",
    "get_loss": "psft.core.losses",
    "register_loss": "psft.core.losses",
    "token_mean": "psft.core.losses",
}
__all__ = ["LOSSES", "LossOutput", "PSFTConfig", "PSFTTrainer", "get_loss", "register_loss", "token_mean"]

if TYPE_CHECKING:
    from psft.core.config import PSFTConfig
    from psft.core.losses import LOSSES, LossOutput, get_loss, register_loss, token_mean
    from psft.core.trainer import PSFTTrainer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'psft' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


# ---------------------------------------------------------------- moved modules (issue 24: one release)
# old module name -> its new home. `import psft.trainer` still works and IS psft.core.trainer (so monkeypatching
# it patches the real module), with a DeprecationWarning; the aliases go in the next release.
_MOVED = {
    "psft.losses": "psft.core.losses",
    "psft.config": "psft.core.config",
    "psft.trainer": "psft.core.trainer",
    "psft.reliability": "psft.core.guards",
    "psft.checkpoint": "psft.core.checkpoint",
    "psft.logprobs": "psft.core.logprobs",
    "psft.reference": "psft.core.reference",
    "psft.engines": "psft.core.engines",
    "psft.tiny": "psft.data.tiny",
    "psft.templates": "psft.data.templates",
    "psft.records": "psft.data.validate",
    "psft.convert": "psft.data.convert",
    "psft.compare": "psft.experiments",
    "psft.report": "psft.experiments.report",
    "psft.analysis": "psft.experiments.analysis",
    "psft.plots": "psft.experiments.plots",
    "psft.demo": "psft.cli.demo",
    "psft.stage": "psft.stages.chain",
    "psft.rl": "psft.stages.rl",
    "psft.dpo": "psft.stages.dpo",
    "psft.rewards": "psft.stages.rewards",
    "psft.args": "psft.cli.args",
    "psft.cli_help": "psft.cli.help",
    "psft.threads": "psft.core.threads",
    "psft.train": "psft.cli.train",
    "psft.eval.cli": "psft.cli.eval",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves an old module name as the new module object."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(name, self) if name in _MOVED else None

    def create_module(self, spec: Any) -> Any:
        warnings.warn(f"{spec.name} moved to {_MOVED[spec.name]}", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(_MOVED[spec.name])
        self.spec = module.__spec__  # the import system sets the alias's spec on it next: put it back
        return module

    def exec_module(self, module: Any) -> None:
        module.__spec__ = self.spec  # already executed under its new name


sys.meta_path.insert(0, _MovedModules())  # first: an editable install's finder would serve stale files
