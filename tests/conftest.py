"""Fixtures shared by several test files (everything built locally: no download)."""

import pytest

from psft.tiny import make_char_tokenizer, make_tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny Llama and its character tokenizer, saved as a model directory."""
    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = make_char_tokenizer()
    make_tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
