"""What a new user meets first: the Getting started Python snippet, CPU-safe defaults, built-in names everywhere,
threads, help, the example data files and the paper's config."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import transformers
import yaml

import psft.core.threads as threads
from psft import PSFTConfig
from psft.cli import main
from psft.data.sft import load_sft_dataset
from psft.eval.records import load_records

ROOT = Path(__file__).resolve().parents[1]


GETTING_STARTED = ROOT / "docs" / "getting-started.md"  # the README links it; the Python snippet lives there


def python_snippet() -> str:
    match = re.search(r"## Python\n.*?```python\n(.*?)```", GETTING_STARTED.read_text(), re.S)
    assert match, f"{GETTING_STARTED}: no '## Python' section with a python block"
    return match.group(1)


def test_every_python_block_of_the_readme_and_docs_compiles():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [
        (page.name, block)
        for page in pages
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    ]
    assert len(blocks) >= 2
    for i, (page, block) in enumerate(blocks):
        compile(block, f"{page} python block {i}", "exec")


def test_readme_python_snippet_runs_verbatim_offline_on_cpu(tmp_path, monkeypatch):
    """~10-25 s on one thread: the snippet itself, unchanged (built-in model and task, 16 steps)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    scope: dict = {}
    exec(compile(python_snippet(), "docs/getting-started.md:Python", "exec"), scope)
    trainer = scope["trainer"]
    assert trainer.state.global_step == scope["args"].max_steps
    assert not trainer.args.bf16
    assert (tmp_path / "runs" / "quickstart" / "model.safetensors").is_file()
    ratios = [e["ratio/max"] for e in trainer.state.log_history if "ratio/max" in e]
    assert ratios, "PSFT metrics were not logged"


def fake_bf16_gpu(monkeypatch):
    """Make transformers and psft believe a bf16-capable GPU is present (the checks only, no device use)."""
    monkeypatch.setattr("psft.core.config.accelerator_available", lambda: True)
    monkeypatch.setattr(transformers.utils, "is_torch_bf16_gpu_available", lambda: True)
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)


def test_bf16_defaults_to_what_the_machine_supports(tmp_path, monkeypatch):
    cpu = PSFTConfig(output_dir=str(tmp_path))
    assert cpu.bf16 is False and cpu.dataloader_pin_memory is False
    assert PSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True).bf16 is True  # explicit wins
    fake_bf16_gpu(monkeypatch)
    gpu = PSFTConfig(output_dir=str(tmp_path))
    assert gpu.bf16 is True and gpu.dataloader_pin_memory is True
    assert PSFTConfig(output_dir=str(tmp_path), fp16=True).bf16 is False
    assert PSFTConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is False


def test_unset_bf16_follows_the_accelerate_launch(tmp_path, monkeypatch):
    """`accelerate launch` with `mixed_precision: bf16` (examples/accelerate/zero*.yaml) puts bf16 in DeepSpeed's
    config: the Trainer's bf16 must agree, or transformers refuses the run; an explicit value still wins."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert PSFTConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is True
    assert PSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False).bf16 is False
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    fake_bf16_gpu(monkeypatch)
    assert PSFTConfig(output_dir=str(tmp_path)).bf16 is False


def test_no_checkpointing_deprecation_warning_unless_the_user_sets_the_old_name(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        args = PSFTConfig(output_dir=str(tmp_path))
        assert args.activation_checkpointing is True and args.gradient_checkpointing is True  # TRL's default
        off = PSFTConfig(output_dir=str(tmp_path), activation_checkpointing=False)
        assert off.gradient_checkpointing is False
    with pytest.warns(FutureWarning, match="activation_checkpointing"):  # the user can act on this one
        PSFTConfig(output_dir=str(tmp_path), gradient_checkpointing=False)


def test_threads_precedence_option_then_env_then_free_cpus(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(2)[0] == 2
    assert threads.choose_threads()[0] == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.4, 0, 0))
    assert threads.choose_threads() == (8, "8 CPUs available, load 0.4")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (5.7, 0, 0))  # 5 CPUs kept busy by other jobs
    assert threads.choose_threads()[0] == 3
    assert threads.choose_threads(jobs=2)[0] == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # three processes of one launch share the 3 free CPUs
    assert threads.choose_threads()[0] == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (40.0, 0, 0))
    assert threads.choose_threads()[0] == 1
    with pytest.raises(Exception, match="threads must be >= 1"):
        threads.choose_threads(0)


def test_available_cpus_is_within_the_affinity_mask():
    assert 1 <= threads.available_cpus() <= len(os.sched_getaffinity(0))


def test_cgroup_quota_caps_the_cpus(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    real_path = threads.Path
    monkeypatch.setattr(threads, "Path", lambda p: cpu_max if p == "/sys/fs/cgroup/cpu.max" else real_path(p))
    cpu_max.write_text("150000 100000\n")
    assert threads._cgroup_quota() == 2
    cpu_max.write_text("max 100000\n")
    assert threads._cgroup_quota() is None


def test_psft_help_imports_neither_torch_nor_trl():
    code = (
        "import sys, psft.cli; psft.cli.main(['--help']); print('torch' in sys.modules, 'trl' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False False")


def test_train_help_shows_psft_options_first_and_points_to_the_full_list(capsys):
    assert main(["train", "--help"]) == 0
    short = capsys.readouterr().out
    assert (
        short.index("psft options:")
        < short.index("--mini_batches_per_rollout")
        < short.index("common options")
    )
    assert "--threads" in short and "psft train --help-all" in short
    assert len(short.splitlines()) < 250
    assert main(["train", "--help-all"]) == 0
    full = capsys.readouterr().out
    assert full.index("psft options:") < full.index("--epsilon_high") < full.index("--adam_beta1")
    assert len(full.splitlines()) > 3 * len(short.splitlines())


def test_eval_reads_builtin_data_and_budgets_tokens_to_the_model(tmp_path, capsys):
    """~3-8 s: 3 greedy prompts on the built-in model."""
    records = load_records("psft/arith", limit=5)
    assert len(records) == 5 and {r.checker for r in records} == {"math"} and records[0].task == "arith"
    assert {r.task for r in load_records("psft/general")} == set(
        __import__("psft.tasks", fromlist=["GENERAL_TASKS"]).GENERAL_TASKS
    )
    from psft.cli.eval import default_max_new_tokens, load_model
    from psft.eval.generate import encode_prompt

    model, tokenizer = load_model("psft/tiny-base", "cpu")
    longest = max(len(encode_prompt(tokenizer, r.prompt)) for r in records)
    assert default_max_new_tokens(model, tokenizer, records) == model.config.max_position_embeddings - longest
    too_long = load_records([{"prompt": "x" * 200, "completion": "y"}])
    with pytest.raises(Exception, match="fills the model's 128 positions"):
        default_max_new_tokens(model, tokenizer, too_long)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--model",
                "psft/tiny-base",
                "--data",
                "psft/arith",
                "--limit",
                "3",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "metrics.json").is_file()
    assert f"wrote {out / 'metrics.json'}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["text", "prompt_completion", "messages"])
def test_example_data_files_load_and_train_two_steps(tmp_path, name, capsys):
    """~3-6 s each: the README's sample file of each format trains 2 PSFT steps on the built-in model."""
    path = ROOT / "examples" / "data" / f"{name}.jsonl"
    assert len(load_sft_dataset(str(path))) == 8
    out = tmp_path / "out"
    argv = [
        "train",
        "--model_name_or_path",
        "psft/tiny-base",
        "--dataset_name",
        str(path),
        "--max_steps",
        "2",
    ]
    argv += [
        "--per_device_train_batch_size",
        "4",
        "--mini_batches_per_rollout",
        "2",
        "--output_dir",
        str(out),
    ]
    argv += ["--activation_checkpointing", "false", "--report_to", "none", "--save_strategy", "no"]
    argv += ["--disable_tqdm", "true", "--learning_rate", "1e-3"]
    assert main(argv) == 0
    assert (out / "model.safetensors").is_file() and (out / "trainer_state.json").is_file()
    assert "psft train: 2 optimizer steps" in capsys.readouterr().out


def test_paper_config_parses_to_the_papers_hyperparameters(monkeypatch):
    from psft.cli.train import make_parser

    fake_bf16_gpu(monkeypatch)
    script, args, model, _, _ = make_parser().parse_args_and_config(
        args=["--config", str(ROOT / "examples" / "psft-paper.yaml")]
    )
    assert (args.epsilon, args.epsilon_high, args.mini_batches_per_rollout) == (0.2, 0.28, 8)
    assert (args.learning_rate, args.weight_decay, args.max_grad_norm, args.num_train_epochs) == (
        1e-6,
        0.1,
        1.0,
        10,
    )
    assert args.warmup_steps == 10 * args.mini_batches_per_rollout and args.bf16 is True
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 8 == 32  # 8 GPUs
    assert model.model_name_or_path == "Qwen/Qwen2.5-7B-Instruct" and script.dataset_name
    raw = yaml.safe_load((ROOT / "examples" / "psft-paper.yaml").read_text())
    assert "use_cpu" not in raw and "bf16" not in raw
