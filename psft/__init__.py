"""psft: Proximal Supervised Fine-Tuning on the Hugging Face stack.

The public names load on first use, so `import psft.errors` or `psft --help` does not import torch or TRL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "PSFTConfig": "psft.config",
    "PSFTTrainer": "psft.trainer",
    "LOSSES": "psft.losses",
    "LossOutput": "psft.losses",
    "get_loss": "psft.losses",
    "register_loss": "psft.losses",
    "token_mean": "psft.losses",
}
__all__ = ["LOSSES", "LossOutput", "PSFTConfig", "PSFTTrainer", "get_loss", "register_loss", "token_mean"]

if TYPE_CHECKING:
    from psft.config import PSFTConfig
    from psft.losses import LOSSES, LossOutput, get_loss, register_loss, token_mean
    from psft.trainer import PSFTTrainer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'psft' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
