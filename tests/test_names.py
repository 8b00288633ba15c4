"""One resolver of names: models (`psft.data.models`) and data (`psft.data.sources`). A typo in a built-in name gets a
did-you-mean, an unreachable hub is said to be unreachable within seconds, and every data loader reads files
through the same resolver (the same message for the same bad file). No test touches the network."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

from psft.cli import main as psft_main
from psft.data.models import BUILTIN_MODEL_NAME, load_model, load_tokenizer, resolve_model_name
from psft.data.preference import load_preference_dataset
from psft.data.sft import load_sft_dataset
from psft.data.sources import resolve_source
from psft.errors import UserError
from psft.eval.records import load_records
from psft.stages.chain import load_data_rows
from psft.stages.rl import load_rl_dataset


def test_a_typo_in_a_built_in_model_gets_a_did_you_mean_not_a_hub_lookup(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # a lookup would fail
    with pytest.raises(
        UserError, match=r"psft/tiny-bsae: no such built-in model; did you mean psft/tiny-base\?"
    ):
        load_model("psft/tiny-bsae")
    assert resolve_model_name(BUILTIN_MODEL_NAME).endswith("tiny-base")


def test_psft_train_names_the_built_in_model_it_meant(tmp_path, capsys):
    argv = ["train", "--model_name_or_path", "psft/tiny-bsae", "--dataset_name", "psft/arith"]
    assert psft_main([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    assert "did you mean psft/tiny-base?" in capsys.readouterr().err.splitlines()[-1]


def hub_at_a_closed_port(monkeypatch):
    """The hub switched on, at a local port nothing listens on (connection refused), no proxy."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("urllib.request.getproxies", lambda: {})


def test_an_unreachable_hub_is_reported_as_unreachable_without_retrying(monkeypatch):
    """No timing (CI machines are shared): fast means the hub is asked nothing after the probe failed, so
    huggingface_hub's retries (about 30 s, 12 lines of them) never start."""
    import transformers

    hub_at_a_closed_port(monkeypatch)
    calls = []
    real = transformers.AutoConfig.from_pretrained
    monkeypatch.setattr(
        transformers.AutoConfig, "from_pretrained", lambda *a, **k: calls.append(k) or real(*a, **k)
    )
    with pytest.raises(UserError) as error:
        load_tokenizer("some-org/some-model")
    message = str(error.value)
    assert "the Hugging Face hub is unreachable" in message and "127.0.0.1:9" in message
    assert "no such model" not in message
    assert calls and all(k.get("local_files_only") for k in calls), "the hub was asked after all"


def test_offline_and_not_cached_says_so(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="not in the hub cache, and HF_HUB_OFFLINE is set"):
        load_model("some-org/some-model")


def test_the_loader_resolves_directories_and_dtypes(tiny_model_dir):
    assert load_model(str(tiny_model_dir), "bfloat16").dtype == torch.bfloat16
    assert load_model(str(tiny_model_dir), torch.float16).dtype == torch.float16
    with pytest.raises(UserError, match="dtype must be one of"):
        load_model(str(tiny_model_dir), "float33")


def test_data_names_resolve_to_one_kind(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    assert resolve_source("psft/arith").kind == "builtin"
    assert resolve_source(str(data)) == resolve_source(str(data)).__class__(str(data), "file", ".jsonl")
    assert resolve_source("org/dataset").kind == "hub"
    with pytest.raises(UserError, match="missing.jsonl: no such data file"):
        resolve_source(str(tmp_path / "missing.jsonl"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="unsupported file type"):
        resolve_source(str(tmp_path / "notes.txt"))


LOADERS = {
    "sft": load_sft_dataset,
    "preference": load_preference_dataset,
    "rl": lambda name: load_rl_dataset(name, "train"),
    "stage": lambda name: load_data_rows(name, "test"),
    "eval": load_records,
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_every_data_loader_reads_files_through_the_one_resolver(loader, tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(UserError, match=r"bad.parquet: cannot be read as parquet: .*magic bytes"):
        LOADERS[loader](str(bad))


@pytest.mark.parametrize(
    ("loader", "typo", "meant"),
    [("sft", "psft/arith_", "psft/arith"), ("eval", "psft/genral", "psft/general"),
     ("stage", "psft/trivai", "psft/trivia"), ("preference", "psft/perf", "psft/pref")],
)  # fmt: skip
def test_a_typo_in_a_built_in_task_gets_a_did_you_mean(loader, typo, meant):
    with pytest.raises(UserError, match=f"{typo}: not a built-in .*did you mean {meant}\\?"):
        LOADERS[loader](typo)
