"""Interrupt and resume with real SIGKILLs and SIGTERMs: the resumed run ends with the uninterrupted run's parameters."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from psft.core.checkpoint import publish, write_manifest

SCRIPT = Path(__file__).with_name("resume_run.py")


def run(out, *flags):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *flags], capture_output=True, text=True, env=env, timeout=300
    )


def final_params(out):
    return load_file(out / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run(out)
    assert result.returncode == 0, result.stderr[-2000:]
    return final_params(out)


def test_sigkill_while_saving_inside_a_rollout_then_resume_gives_the_same_parameters(tmp_path, uninterrupted):
    out = tmp_path / "run"
    # checkpoints every 3 steps, rollouts of K = 4 from step 0: killed while writing checkpoint-9 (inside the
    # rollout [8, 10)); the last good checkpoint, checkpoint-6, is two steps into the rollout [4, 8).
    killed = run(out, "--kill-saving", "9")
    assert killed.returncode == -9
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert (out / "tmp-checkpoint-9").is_dir()  # the half-written one is invisible to resume_from_checkpoint
    state = torch.load(out / "checkpoint-6" / "psft_run_state_0.pt", weights_only=True)
    assert len(state["pending"]) == 2 and state["pending"][0][0][1] is not None
    resumed = run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming training from checkpoint" in resumed.stderr or (out / "checkpoint-16").is_dir()
    assert not (out / "tmp-checkpoint-9").exists()
    after = final_params(out)
    for name, value in uninterrupted.items():
        torch.testing.assert_close(after[name], value, atol=0, rtol=0, msg=name)


def test_resuming_without_the_rollout_state_drifts_so_the_state_is_what_makes_it_exact(
    tmp_path, uninterrupted
):
    out = tmp_path / "run"
    assert run(out, "--kill-saving", "9").returncode == -9
    (out / "checkpoint-6" / "psft_run_state_0.pt").unlink()
    write_manifest(str(out / "checkpoint-6"))  # a complete checkpoint without the state (older psft)
    resumed = run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "has no PSFT run state" in resumed.stderr
    after = final_params(out)
    assert max((after[k] - v).abs().max().item() for k, v in uninterrupted.items()) > 1e-3


def test_sigterm_between_mini_batches_of_a_rollout_checkpoints_and_resumes_exactly(tmp_path, uninterrupted):
    """SIGTERM during step 5 (the second mini-batch of the rollout [4, 8), K = 4): the run writes checkpoint-5 at
    that step's end, exits with one line saying how to resume, and the resumed run ends where the uninterrupted
    run did."""
    out = tmp_path / "run"
    stopped = run(out, "--sigterm-at", "4")
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    line = stopped.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("preempted: SIGTERM: stopped at step 5 after writing ") and "checkpoint-5" in line
    ), line
    assert "resume_from_checkpoint=True" in line
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-5"]
    state = torch.load(out / "checkpoint-5" / "psft_run_state_0.pt", weights_only=True)
    assert len(state["pending"]) == 3 and state["pending"][0][0][1] is not None  # inside the rollout
    resumed = run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = final_params(out)
    for name, value in uninterrupted.items():
        torch.testing.assert_close(after[name], value, atol=0, rtol=0, msg=name)


def test_publish_replaces_an_existing_checkpoint_and_leaves_no_staging(tmp_path):
    staged = tmp_path / "tmp-checkpoint-4" / "checkpoint-4"
    staged.mkdir(parents=True)
    (staged / "weights").write_text("new")
    final = tmp_path / "checkpoint-4"
    final.mkdir()
    (final / "weights").write_text("old")
    publish(str(staged), str(final))
    assert (final / "weights").read_text() == "new"
    assert not (tmp_path / "tmp-checkpoint-4").exists()


def test_a_tied_embedding_model_resumes_exactly_and_stays_tied(tmp_path):
    """Most small instruct models (SmolLM2, the study's) tie the output head to the input embedding: the checkpoint
    stores that tensor once and transformers warns of a "missing" lm_head.weight on resume. The resumed run must still
    end with the uninterrupted run's parameters and one shared tensor (resume_run.py asserts the tie at the end)."""
    whole = run(tmp_path / "whole", "--tied")
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "run"
    assert run(out, "--tied", "--sigterm-at", "4").returncode == 143
    stored = load_file(out / "checkpoint-5" / "model.safetensors")
    # stored once: the tie is what the resume must restore
    assert "model.embed_tokens.weight" in stored and "lm_head.weight" not in stored
    resumed = run(out, "--tied", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, after = final_params(tmp_path / "whole"), final_params(out)
    assert expected.keys() == after.keys()
    for name, value in expected.items():
        torch.testing.assert_close(after[name], value, atol=0, rtol=0, msg=name)
