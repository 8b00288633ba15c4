"""psft._compat: the supported upstream ranges, their one-line check before training, and pyproject agreeing."""

import os
import re
from pathlib import Path

import pytest

from psft import _compat, cli
from psft.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SUPPORTED_SET = {"torch": "2.13.0+cpu", "transformers": "5.25.0", "trl": "1.16.0", "accelerate": "1.16.0"}


def test_installed_environment_is_supported():
    assert _compat.unsupported() == []


def test_in_range_versions_pass_and_local_tags_count_as_their_version():
    assert _compat.unsupported(SUPPORTED_SET) == []
    assert _compat.unsupported({**SUPPORTED_SET, "torch": "2.15.0+cu130", "transformers": "5.24.0"}) == []


@pytest.mark.parametrize(
    "name, found",
    [
        ("transformers", "5.26.0"),
        ("transformers", "5.23.1"),
        ("trl", "1.17.0"),
        ("torch", "2.16.0.dev20261201"),
        ("torch", "2.12.1"),
        ("accelerate", "2.0.0"),
    ],
)
def test_out_of_range_names_the_range_and_the_installed_version(name, found):
    problems = _compat.unsupported({**SUPPORTED_SET, name: found})
    assert problems == [f"{name} {found} is installed; psft supports {name}{_compat.SUPPORTED[name]}"]


def test_missing_package_is_named():
    versions = {k: v for k, v in SUPPORTED_SET.items() if k != "trl"}
    assert _compat.unsupported(versions) == [
        f"trl is not installed; psft supports trl{_compat.SUPPORTED['trl']}"
    ]


def test_check_is_one_line_user_error_and_can_be_overridden(monkeypatch):
    monkeypatch.delenv(_compat.ALLOW_ENV, raising=False)
    with pytest.raises(UserError) as err:
        _compat.check_versions({**SUPPORTED_SET, "transformers": "5.26.0"})
    assert "\n" not in str(err.value) and "transformers 5.26.0 is installed" in str(err.value)
    monkeypatch.setenv(_compat.ALLOW_ENV, "1")
    _compat.check_versions({**SUPPORTED_SET, "transformers": "5.26.0"})


def test_pyproject_requirements_equal_the_supported_ranges():
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = {m.group(1): m.group(2) for m in (re.match(r"([A-Za-z0-9_.-]+)(.*)", d) for d in deps)}
    for name, spec in _compat.SUPPORTED.items():
        assert ranges[name] == spec, name


def _fake_transformers(monkeypatch, found="5.99.0"):
    real = _compat.installed_version
    monkeypatch.setattr(_compat, "installed_version", lambda n: found if n == "transformers" else real(n))
    monkeypatch.delenv(_compat.ALLOW_ENV, raising=False)


@pytest.mark.parametrize("command", cli.TRAINING_COMMANDS)
def test_training_commands_refuse_an_unsupported_version_before_anything_loads(monkeypatch, capsys, command):
    _fake_transformers(monkeypatch)
    # the config does not exist: the version error must come first
    assert cli.main([command, "--config", "no-such.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"psft {command}: error: transformers 5.99.0 is installed; psft supports "
        f"transformers{_compat.SUPPORTED['transformers']} (pip install 'psft' resolves a supported set; "
        f"{_compat.ALLOW_ENV}=1 tries this one anyway)"
    )


def test_help_works_whatever_the_versions(monkeypatch, capsys):
    _fake_transformers(monkeypatch)
    try:
        code = cli.main(["demo", "--help"])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 0 and "usage" in capsys.readouterr().out


def test_trainer_refuses_an_unsupported_version(monkeypatch):
    from psft import PSFTTrainer

    _fake_transformers(monkeypatch)
    with pytest.raises(UserError, match="transformers 5.99.0 is installed"):
        PSFTTrainer(model="psft/tiny-base")


def test_convert_names_the_missing_gguf_package_in_one_line(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert cli.main(["convert", str(tmp_path / "model.gguf"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        "psft convert: error: reading a GGUF file needs the gguf package: pip install 'gguf>=0.10'"
    )


def test_the_install_line_brings_what_convert_needs():
    """The README's install line (`pip install psft` / `-e .`) must be enough for `psft convert` on a GGUF."""
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"gguf\b", d) for d in deps)


def test_hub_kernels_stay_off_unless_the_user_asks(monkeypatch):
    monkeypatch.delenv(_compat.HUB_KERNELS_ENV, raising=False)
    _compat.keep_hub_kernels_off()
    assert os.environ[_compat.HUB_KERNELS_ENV] == "NO"
    monkeypatch.setenv(_compat.HUB_KERNELS_ENV, "YES")
    _compat.keep_hub_kernels_off()
    assert os.environ[_compat.HUB_KERNELS_ENV] == "YES"


class _KernelizedModel:
    """Stands in for a transformers 5.25 model kernelized at load: records `reset_kernels`."""

    use_kernels = True
    resets = 0

    def reset_kernels(self) -> bool:
        self.resets += 1
        self.use_kernels = False
        return True


@pytest.mark.parametrize(("setting", "reset"), [(None, True), ("NO", True), ("0", True), ("YES", False), ("1", False)])
def test_unkernelize_resets_unless_the_user_asks_for_kernels(setting, reset, monkeypatch):
    if setting is None:
        monkeypatch.delenv(_compat.HUB_KERNELS_ENV, raising=False)
    else:
        monkeypatch.setenv(_compat.HUB_KERNELS_ENV, setting)
    model = _KernelizedModel()
    assert _compat.unkernelize(model) is reset
    assert (model.resets, model.use_kernels) == ((1, False) if reset else (0, True))
    assert os.environ.get(_compat.HUB_KERNELS_ENV) == setting  # lifted for the reset alone
    assert _compat.unkernelize(model) is False  # nothing left to reset, or still wanted


def test_model_loaded_before_psft_trains_without_hub_kernels(monkeypatch, tmp_path):
    """The TRL flow: the caller loads the model (transformers 5.25 kernelizes it when `kernels` is installed),
    then hands it over. PSFTTrainer's default (USE_HUB_KERNELS=NO) made its first train() raise
    "Hub kernels are disabled" (found on the latest set); now it resets the model and trains."""
    from transformers import AutoModelForCausalLM

    from psft import PSFTConfig, PSFTTrainer
    from psft.data.models import resolve_model_name
    from psft.data.sft import load_sft_dataset

    monkeypatch.delenv(_compat.HUB_KERNELS_ENV, raising=False)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_name("psft/tiny-base"))
    args = PSFTConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", activation_checkpointing=False)
    trainer = PSFTTrainer(model=model, args=args, train_dataset=load_sft_dataset("psft/arith"))
    assert getattr(trainer.model, "use_kernels", False) is False
    trainer.train()
    assert trainer.state.global_step == 1


def test_models_psft_loads_are_not_kernelized(monkeypatch):
    """psft's one loader (`load_model`, behind the stages and eval from Python too) sets psft's default first."""
    from psft.data.models import load_model

    monkeypatch.delenv(_compat.HUB_KERNELS_ENV, raising=False)
    model = load_model("psft/tiny-base")
    assert os.environ[_compat.HUB_KERNELS_ENV] == "NO"
    assert getattr(model, "use_kernels", False) is False
    model.train()  # the switch that raised on a model kernelized at load


def test_trainer_model_is_not_kernelized(monkeypatch, tmp_path):
    """transformers 5.25 with `kernels` installed kernelizes every loaded model by default (train/eval switch
    kernels): the model PSFTTrainer trains must keep transformers' own layers (found on the latest set)."""
    from psft import PSFTConfig, PSFTTrainer
    from psft.data.sft import load_sft_dataset

    monkeypatch.delenv(_compat.HUB_KERNELS_ENV, raising=False)
    args = PSFTConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", activation_checkpointing=False)
    trainer = PSFTTrainer(model="psft/tiny-base", args=args, train_dataset=load_sft_dataset("psft/arith"))
    assert getattr(trainer.model, "use_kernels", False) is False
