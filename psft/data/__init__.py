"""Training data and models: sources (local files, hub names, built-in tasks), record checks, chat
templates, model and tokenizer loading."""

from __future__ import annotations

import importlib.util
from typing import Any


def __getattr__(name: str) -> Any:
    """`psft.data.X` for the old flat module's names (now psft.data.sft), for one release."""
    if name.startswith("__") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import warnings

    from psft.data import sft

    warnings.warn(f"psft.data.{name} moved to psft.data.sft.{name}", DeprecationWarning, stacklevel=2)
    return getattr(sft, name)
