"""The benchmark scripts still run: each one's `--smoke` mode (tiny model, a few steps) prints well-formed JSON.

This checks the scripts, not the numbers: timings on a shared CI machine mean nothing.
"""

import importlib
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


def import_benchmark(name: str = "_common"):
    """A module of benchmarks/ (not a package): `_common` by default, or a script such as `bench_psft`."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


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
    assert memory["old_pass_added_mb"] >= 0 and memory["old_pass_tensor_mb"] > 0
    # the naive pass holds the full logits and their log-softmax at once: the accounting must see at least that
    assert memory["full_logits_pass_tensor_mb"] >= 2 * memory["full_logits_mb"]


@pytest.mark.slow
def test_bench_vocab_memory_smoke():
    report = run_smoke("bench_vocab_memory.py")
    assert [row["vocab"] for row in report["rows"]] == [512, 1024]
    for row in report["rows"]:
        assert row["old_pass_added_mb"] >= 0 and row["old_pass_tensor_mb"] > 0
        assert row["full_logits_pass_tensor_mb"] >= 2 * row["full_logits_mb"] - 0.1  # rounded to 0.1 MiB
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


@pytest.mark.parametrize("size", ["smollm2", "gemma3"])
def test_pretrained_size_without_its_directory_names_the_variable(size, monkeypatch, tmp_path):
    """A pretrained size (real weights, never downloaded) exits in one line naming its variable and the fix."""
    _common = import_benchmark()
    env = _common.PRETRAINED[size][0]
    monkeypatch.setenv(env, str(tmp_path / "missing"))
    with pytest.raises(SystemExit) as exit_info:
        _common.make_model(size)
    message = str(exit_info.value)
    assert f"--size {size} needs {env}=DIR" in message and "psft convert" in message
    assert "\n" not in message
    assert size in _common.SIZES


def test_peak_tensor_memory_counts_what_is_held_at_once():
    """4 MiB, then 4 MiB more while the first is alive, then the first freed and 4 MiB again: the peak is 8 MiB
    (allocation records on CPU), however much malloc had cached before."""
    _common = import_benchmark()
    import torch

    held = torch.ones(2**20)  # alive before the block: not counted
    with _common.PeakTensorMemory() as memory:
        a = torch.ones(2**20)
        b = a * 2
        del a
        c = b + 1
        del b, c
    assert memory.peak == pytest.approx(8.0, abs=0.01)
    assert held.numel() == 2**20


@pytest.mark.parametrize("kind", ["sft_tensors", "psft_tensors"])
def test_training_tensor_probe_sees_gradients_and_optimizer_state(kind, tmp_path):
    """Training allocates a gradient and AdamW's two moments for every weight inside the probe: the peak it
    reports is at least three times the weights' bytes (the weights themselves were made before it started)."""
    bench_psft = import_benchmark("bench_psft")
    weights_mb = sum(p.numel() * 4 for p in bench_psft.make_model("tiny").parameters()) / 2**20
    result = bench_psft.probe("tiny", 4, kind, 2, 1, str(tmp_path))
    assert result["tensor_mb"] >= 3 * weights_mb
