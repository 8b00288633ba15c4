"""One loader of models and tokenizers: a name resolves to the built-in tiny model, a local directory or a hub name.

Every command loads through here (`resolve_model_name`, `load_tokenizer`, `load_model`), so a name means the same
everywhere: `psft/<name>` is psft's own namespace (a typo gets a did-you-mean, never a hub lookup), a path that
exists is a local directory, anything else is a hub name. Before the first download of a hub name the hub's
address is probed with one short TCP connection (`HUB_PROBE_TIMEOUT`), so an unreachable hub is said to be
unreachable in seconds instead of after huggingface_hub's retries (about 30 s) and a transformers message that
reads like "no such model".
"""

from __future__ import annotations

import difflib
import os
import socket
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from psft._compat import keep_hub_kernels_off
from psft.errors import UserError, first_line

BUILTIN_PREFIX = "psft/"
BUILTIN_MODEL_NAME = "psft/tiny-base"
BUILTIN_MODELS = {BUILTIN_MODEL_NAME: "tiny-base"}  # name -> directory under psft/assets
HUB_PROBE_TIMEOUT = 3.0  # seconds for the TCP connection that tells a reachable hub from an unreachable one
DTYPES = ("auto", "float32", "float16", "bfloat16")


def builtin_model_path(name: str = BUILTIN_MODEL_NAME) -> str:
    """Directory of a built-in model shipped in the package (made by `scripts/pretrain_tiny.py`)."""
    path = Path(__file__).parents[1] / "assets" / BUILTIN_MODELS[name]
    if not (path / "config.json").is_file():
        raise UserError(
            f"the built-in model is missing from {path}; reinstall psft or run scripts/pretrain_tiny.py"
        )
    return str(path)


def resolve_model_name(name: str) -> str:
    """A built-in name (`psft/tiny-base`) -> the shipped model's directory; an unknown `psft/...` name that is not
    a path -> a UserError with a did-you-mean; any other name or path unchanged (a local directory or hub name)."""
    if name in BUILTIN_MODELS:
        return builtin_model_path(name)
    if name.startswith(BUILTIN_PREFIX) and not os.path.exists(name):
        close = difflib.get_close_matches(name, list(BUILTIN_MODELS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserError(f"{name}: no such built-in model; {hint}built-in models: {', '.join(BUILTIN_MODELS)}")
    return name


def is_hub_name(name: str) -> bool:
    """Whether `name` (already resolved) is looked up on the hub: it does not exist here and reads `org/name` or
    `name` (no leading `.`, `/`, `~`, no more than one `/`)."""
    return (
        not os.path.exists(os.path.expanduser(name))
        and name.count("/") <= 1
        and not name.startswith((".", "/", "~"))
    )


def hub_unreachable() -> str | None:
    """Why the hub (`HF_ENDPOINT`) cannot be reached, or None when a TCP connection to it opens within
    `HUB_PROBE_TIMEOUT` (or a proxy is configured: the proxy, not us, connects then)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    if not url.hostname or urllib.request.getproxies():
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT).close()
    except OSError as err:
        return f"cannot connect to {constants.ENDPOINT}: {err.strerror or err}"
    return None


_CHECKED: set[tuple[str, str | None]] = set()


def check_hub_model(
    name: str, revision: str | None = None, trust_remote_code: bool = False, what: str = ""
) -> None:
    """Fail fast, with one line, when hub model `name` cannot be loaded: not cached and the hub offline
    (`HF_HUB_OFFLINE`) or unreachable, or no such model on the hub. Reads one small file (config.json)."""
    from huggingface_hub import constants
    from transformers import AutoConfig

    if (name, revision) in _CHECKED:
        return
    label = f"{what} {name}".strip()
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
    try:
        AutoConfig.from_pretrained(name, local_files_only=True, **kwargs)  # in the hub cache: no network
    except (OSError, ValueError):
        if constants.HF_HUB_OFFLINE:
            raise UserError(
                f"{label}: not a local directory and not in the hub cache, and HF_HUB_OFFLINE is set "
                "(unset it to download the model)"
            ) from None
        why = hub_unreachable()
        if why is not None:
            raise UserError(
                f"{label}: not a local directory, and the Hugging Face hub is unreachable ({why}); check the "
                "network or HF_ENDPOINT, or give a local model directory"
            ) from None
        try:
            AutoConfig.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as err:
            raise UserError(
                f"{label}: not a local directory, and the hub has no such model ({first_line(err)})"
            ) from None
    _CHECKED.add((name, revision))


def resolve_and_check(name: str, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """`resolve_model_name`, then, for a hub name, `check_hub_model`: what every loader below loads."""
    path = resolve_model_name(name)
    if is_hub_name(path):
        check_hub_model(path, revision, trust_remote_code)
    return path


def torch_dtype(dtype: Any) -> Any:
    """`dtype` as `from_pretrained` takes it: None (the default), "auto", or a `torch.dtype` (from its name)."""
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


def load_tokenizer(name: str, **kwargs: Any) -> Any:
    """The tokenizer of model `name` (built-in, directory or hub name); `kwargs` go to `from_pretrained`."""
    from transformers import AutoTokenizer

    path = resolve_and_check(name, kwargs.get("revision"), kwargs.get("trust_remote_code", False))
    return AutoTokenizer.from_pretrained(path, **kwargs)


def load_processor(name: str, **kwargs: Any) -> Any:
    """The processor (a tokenizer for text models) of model `name`, as TRL's trainers load it (`AutoProcessor`)."""
    from transformers import AutoProcessor

    path = resolve_and_check(name, kwargs.get("revision"), kwargs.get("trust_remote_code", False))
    return AutoProcessor.from_pretrained(path, **kwargs)


def load_model(name: str, dtype: Any = None, **kwargs: Any) -> Any:
    """The causal LM `name` (built-in, directory or hub name) at `dtype` (None: transformers' default; "auto": the
    checkpoint's; a name or `torch.dtype`); `kwargs` go to `from_pretrained`."""
    from transformers import AutoModelForCausalLM

    keep_hub_kernels_off()  # every model psft loads keeps transformers' own layers (psft._compat), API or CLI
    path = resolve_and_check(name, kwargs.get("revision"), kwargs.get("trust_remote_code", False))
    if dtype is not None:
        kwargs["dtype"] = torch_dtype(dtype)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def load_model_and_tokenizer(name: str, dtype: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """`(load_model(name, dtype), load_tokenizer(name))` with the same `kwargs` (revision, gguf_file, ...)."""
    tokenizer_kwargs = {
        k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code", "gguf_file")
    }
    return load_model(name, dtype, **kwargs), load_tokenizer(name, **tokenizer_kwargs)
