"""The GPU recipe (docs/gpu-study.md, examples/gpu-study.yaml), dry-run on CPU: it parses and validates with the
model swapped for psft/tiny-base, and every method trains one step under its training settings (bf16 off and
tiny sizes: the only changes). Untested on GPU: this checks the config, not the GPU path."""

import math
from pathlib import Path

import yaml

from psft.experiments.plan import CompareConfig, training_arguments, validate_plan

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "examples" / "gpu-study.yaml"
TINY = {"bf16": False, "per_device_train_batch_size": 2, "max_length": 96, "max_steps": 1}


def test_gpu_study_parses_and_validates_with_the_tiny_model():
    config = CompareConfig.from_yaml(str(GPU))
    assert config.model.startswith("Qwen/Qwen2.5-") and config.dtype == "float32"
    assert config.training["bf16"] is True and config.training["num_train_epochs"] >= 10
    rates = {r["overrides"]["learning_rate"] for r in config.runs()}
    assert {1e-6, 2e-5} <= rates  # the paper's PSFT and SFT rates (PSFT.md section 3)
    config.model = "psft/tiny-base"
    config.training = {**config.training, "bf16": False}  # bf16 needs a GPU
    assert len(validate_plan(config, quiet=True)) == 27
    text = (ROOT / "docs" / "gpu-study.md").read_text()
    assert "untested on gpu" in text.lower() and "examples/gpu-study.yaml" in text
    accelerate = yaml.safe_load((ROOT / "examples" / "accelerate" / "fsdp2.yaml").read_text())
    assert accelerate["mixed_precision"] == "bf16" and accelerate["fsdp_config"]["fsdp_version"] == 2


def test_one_step_of_each_method_under_the_gpu_training_settings(tmp_path):
    """The tiny model on its own task (character tokenizer: the word problems would not fit 96 tokens), the GPU
    config's shared training settings and each method's overrides, with bf16 off and tiny sizes."""
    from psft.core.trainer import PSFTTrainer
    from psft.data.models import load_model, load_tokenizer
    from psft.data.sft import load_sft_dataset

    config = CompareConfig.from_yaml(str(GPU))
    config.model, config.train_data = "psft/tiny-base", "psft/arith"
    config.training = {**config.training, **TINY}
    seen = set()
    for run in config.runs():
        if run["method"] in seen:
            continue
        seen.add(run["method"])
        args = training_arguments(config, run, tmp_path / run["id"])
        assert args.warmup_steps == 10 and args.weight_decay == 0.1 and args.assistant_only_loss
        train = load_sft_dataset(config.train_data).select(range(32))
        trainer = PSFTTrainer(
            model=load_model(config.model, config.dtype),
            args=args,
            train_dataset=train,
            processing_class=load_tokenizer(config.model),
        )
        output = trainer.train()
        assert trainer.state.global_step == 1
        assert math.isfinite(output.training_loss), run["method"]  # PSFT's surrogate at step 1 is -1
    assert seen == {"sft", "psft-K8", "sft-kl"}
