"""Training-argument overrides that select each distributed engine on CPU processes (used by the engine tests).

`ddp` is the Trainer's default with several processes. `fsdp2` needs the test-only shim in `tests/fsdp_on_cpu`
(see its docstring) on the launched processes' PYTHONPATH with `PSFT_TEST_FSDP_ON_CPU=1`; `zero2`/`zero3` are
DeepSpeed's own CPU accelerator with gloo, unpatched; ZeRO-3 partitions every parameter (threshold 0).
"""

FSDP2 = dict(
    fsdp="full_shard auto_wrap",
    fsdp_config={
        "version": 2,
        "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
        "reshard_after_forward": True,
        # Checkpoints as sharded DCP folders: gathering a FULL_STATE_DICT "to CPU" on CPU processes keeps the
        # gathered tensors as collective wrappers (no copy is made when the device already is the CPU), which
        # safetensors cannot save ("invalid python storage"); on GPUs the offload copies them.
        "state_dict_type": "SHARDED_STATE_DICT",
    },
)


def zero(stage: int) -> dict:
    optimization = {"stage": stage}
    if stage == 3:
        # DeepSpeed keeps every parameter below this many elements whole on every process (default 100k): the
        # tiny test models have none that large, so without 0 here ZeRO-3 would partition nothing
        optimization["stage3_param_persistence_threshold"] = 0
    config = {
        "zero_optimization": optimization,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
    }
    return dict(deepspeed=config)


ENGINES = {"ddp": {}, "fsdp2": FSDP2, "zero2": zero(2), "zero3": zero(3)}
