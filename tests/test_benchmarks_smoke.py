"""The benchmark scripts still run: each one's `--smoke` mode (tiny model, a few steps) prints well-formed JSON.

This checks the scripts, not the numbers: timings on a shared CI machine mean nothing.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_smoke(script: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # DeepSpeed, when installed (psft[dev]), logs its accelerator choice to stdout on import: the JSON follows it
    return json.loads(result.stdout[result.stdout.index("{") :])


def assert_positive_numbers(report: dict, keys: list[str]) -> None:
    for key in keys:
        assert isinstance(report[key], float) and report[key] > 0, (key, report[key])


@pytest.mark.slow
def test_bench_psft_smoke():
    report = run_smoke("bench_psft.py")
    assert report["size"] == "tiny"
    assert report["malloc"] in ("kept", "default")
    assert_positive_numbers(report, ["t_sft", "t_psft", "t_fwd", "ratio", "floor", "ratio_over_floor"])
    assert report["ratio_by_position_over_floor"] == pytest.approx(
        report["ratio_by_position"] / report["floor"]
    )
    assert [len(v) for v in report["position_medians"].values()] == [report["k"]] * 2
    k = report["k"]
    assert report["floor"] == pytest.approx(1 + (k - 1) / k * report["t_fwd"] / report["t_sft"])
    assert report["ratio_over_floor"] == pytest.approx(report["ratio"] / report["floor"])
    assert set(report["fwd_modes"]) >= {
        "trainer",
        "fused_head",
        "inference_mode",
        "plain_forward",
        "full_logits",
    }
    assert report["physical_floor"] == pytest.approx(
        1 + (k - 1) / k * report["t_plain_fwd"] / report["t_sft"]
    )
    assert report["ratio_over_physical_floor"] == pytest.approx(report["ratio"] / report["physical_floor"])
    assert report["noise_target"] == 0.02 and isinstance(report["noise_met"], bool)
    assert 1 <= report["rounds_done"] <= 2  # one round, and a second only if the first missed the target
    memory = report["memory"]
    for key in ("sft_peak_mb", "psft_peak_mb", "peak_ratio", "full_logits_mb"):
        assert memory[key] > 0, key
    assert memory["old_pass_added_mb"] >= 0 and memory["fused_head_pass_added_mb"] >= 0


@pytest.mark.slow
def test_bench_vocab_memory_smoke():
    report = run_smoke("bench_vocab_memory.py")
    assert [row["vocab"] for row in report["rows"]] == [512, 1024]
    for row in report["rows"]:
        assert row["old_pass_added_mb"] >= 0 and row["fused_head_added_mb"] >= 0
        assert row["full_logits_mb"] == pytest.approx(report["tokens"] * row["vocab"] * 4 / 2**20, abs=0.05)


@pytest.mark.slow
def test_bench_vs_trl_smoke():
    report = run_smoke("bench_vs_trl.py")
    assert report["size"] == "tiny"
    assert_positive_numbers(report, ["t_ours", "t_trl", "tokens_per_s_ours", "tokens_per_s_trl", "ratio"])
    assert report["ratio"] == pytest.approx(report["t_trl"] / report["t_ours"])
    assert len(report["ratio_per_round"]) == report["rounds"]


def test_bench_checkpointing_smoke():
    report = run_smoke("bench_checkpointing.py")
    assert report["size"] == "tiny" and report["steps_timed"] == {"on": 2, "off": 2}
    assert report["off_over_on"] == pytest.approx(report["step_s"]["off"] / report["step_s"]["on"], rel=2e-2)
    assert all(v > 0 for v in report["step_s"].values())
