"""`psft compare` / `psft demo`: configuration, sweeps, and the quick demo end to end."""

import json

import pytest
import yaml

from psft.cli import main
from psft.compare import CompareConfig
from psft.errors import UserError


def test_config_from_yaml_rejects_unknown_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "psft/tiny-base", "methodz": []}))
    with pytest.raises(UserError, match="unknown field\\(s\\) methodz"):
        CompareConfig.from_yaml(str(path))


def test_sweep_multiplies_methods_with_unique_names():
    config = CompareConfig(
        methods=[{"loss_type": "sft"}, {"name": "psft", "loss_type": "psft"}],
        sweep={"learning_rate": [1e-4, 3e-4], "mini_batches_per_rollout": [4]},
    )
    runs = config.runs()
    assert [r["name"] for r in runs] == [
        "sft[learning_rate=0.0001,mini_batches_per_rollout=4]",
        "sft[learning_rate=0.0003,mini_batches_per_rollout=4]",
        "psft[learning_rate=0.0001,mini_batches_per_rollout=4]",
        "psft[learning_rate=0.0003,mini_batches_per_rollout=4]",
    ]
    assert runs[3]["learning_rate"] == 3e-4 and runs[3]["loss_type"] == "psft"
    with pytest.raises(UserError, match="unique"):
        CompareConfig(methods=[{"loss_type": "sft"}, {"loss_type": "sft"}]).runs()
    with pytest.raises(UserError, match="methods\\[0\\]"):
        CompareConfig(methods=[{"learning_rate": 1}]).runs()


def test_demo_quick_end_to_end_writes_a_well_formed_report_and_plots(tmp_path, capsys):
    assert main(["demo", "--quick", "--output_dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    names = [run["name"] for run in report["runs"]]
    assert names == ["sft", "psft-K8"]
    for run in report["runs"]:
        assert run["steps"] == 12
        assert [e["step"] for e in run["evals"]] == [0, 12]
        base, final = run["evals"]
        # the built-in model knows the general tasks and not yet the in-domain one
        assert base["out_of_domain"] > 0.8 and base["in_domain"] < 0.3
        assert base["drift_kl"] == pytest.approx(0.0, abs=1e-6) and final["drift_kl"] > 0
        assert set(base["tasks"]) == {"arith", "reverse", "upper", "add", "length", "json", "brackets"}
        assert run["curves"] and all("entropy" in c and "nll" in c for c in run["curves"])
    psft_curves = report["runs"][1]["curves"]
    assert all("clip_ratio/high" in c for c in psft_curves)
    for png in ("entropy.png", "clip_ratio.png", "pareto.png", "drift.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert "psft compare" in capsys.readouterr().out  # the table
