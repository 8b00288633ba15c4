"""Generation evaluation: batched decoding, answer checking, avg@n / pass@n per task, JSONL samples.

Prompts are left-padded (a decoder-only model continues from the last position, so padding must come
first; the attention mask hides it). Decoding stops at EOS, the end-of-turn token or `max_new_tokens`.
With ``n > 1`` (sampling) each prompt gets `n` completions: avg@n is the mean fraction correct, pass@n the
fraction of prompts with at least one correct completion. Standard errors are over prompts.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from psft.errors import UserError
from psft.eval.checkers import get_checker
from psft.eval.records import EvalRecord, load_records, render_prompt
from psft.records import write_jsonl

# end-of-turn tokens of common chat templates; those present in the vocabulary also stop decoding
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


@dataclass
class TaskScore:
    """Accuracy of one task (or all prompts): avg@n and pass@n with standard errors over prompts."""

    num_prompts: int
    avg: float
    avg_stderr: float
    pass_: float
    pass_stderr: float


@dataclass
class GenerationResult:
    """Scores per task and over all prompts, and every sample."""

    n: int
    tasks: dict[str, TaskScore]
    overall: TaskScore
    samples: list[dict[str, Any]] = field(repr=False)

    def metrics(self, prefix: str = "gen") -> dict[str, float]:
        """Flat metrics for logging: ``{prefix}/{task}/avg@n`` etc., plus ``{prefix}/avg@n`` overall."""
        out: dict[str, float] = {}
        for name, score in [("", self.overall)] + [(f"{t}/", s) for t, s in sorted(self.tasks.items())]:
            out[f"{prefix}/{name}avg@{self.n}"] = score.avg
            out[f"{prefix}/{name}avg@{self.n}_stderr"] = score.avg_stderr
            if self.n > 1:
                out[f"{prefix}/{name}pass@{self.n}"] = score.pass_
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready scores (no samples); an undefined standard error (one prompt) becomes None."""

        def clean(score: TaskScore) -> dict[str, Any]:
            return {
                k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(score).items()
            }

        return {
            "n": self.n,
            "overall": clean(self.overall),
            "tasks": {t: clean(s) for t, s in self.tasks.items()},
        }


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` are correct (Chen et al. 2021): 1 - C(n-c,k)/C(n,k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _mean_stderr(values: list[float]) -> tuple[float, float]:
    m = len(values)
    mean = sum(values) / m
    if m < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (m - 1)
    return mean, math.sqrt(var / m)


def score(correct: list[list[bool]]) -> TaskScore:
    """avg@n and pass@n over prompts, from each prompt's per-sample correctness."""
    avg, avg_se = _mean_stderr([sum(c) / len(c) for c in correct])
    pas, pas_se = _mean_stderr([float(any(c)) for c in correct])
    return TaskScore(len(correct), avg, avg_se, pas, pas_se)


def stop_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the tokenizer and generation config, plus any known end-of-turn token in the vocab."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        ids.update(source if isinstance(source, list) else [source] if source is not None else [])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
    return sorted(ids)


def _progress(total: int, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not (enabled and sys.stderr.isatty()),
        transient=True,
    )


def encode_prompt(tokenizer, prompt: str | list[dict[str, Any]]) -> list[int]:
    """Token ids of a prompt: text with the tokenizer's special tokens, or chat messages via the template."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    return tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str | list[dict[str, Any]]],
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
) -> list[list[str]]:
    """`n` completions for each prompt (text or chat messages), decoded as one left-padded batch.

    Greedy when temperature == 0, else temperature + top-p sampling; the model's generation_config top_k,
    min_p and repetition_penalty are not applied, so the decoding is exactly the one given. Completions are
    cut at the first stop token and decoded without special tokens.
    """
    if temperature == 0 and n > 1:
        raise ValueError("n > 1 needs sampling (temperature > 0); greedy samples would be identical")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids], device=model.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=model.device)
    stops = stop_token_ids(model, tokenizer)
    # exactly the decoding asked for: switch off the model's generation_config extras (top_k, penalties)
    sampling = dict(top_k=None, min_p=None, repetition_penalty=None)
    if temperature > 0:
        sampling.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        sampling.update(do_sample=False, temperature=None, top_p=None)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        eos_token_id=stops,
        pad_token_id=pad_id,
        **sampling,
    )
    texts = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def evaluate_generation(
    model,
    tokenizer,
    data: str | list[dict[str, Any]] | list[EvalRecord],
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    checker: str = "exact",
    tasks: list[str] | None = None,
    limit: int | None = None,
    split: str = "test",
    seed: int = 0,
    samples_path: str | Path | None = None,
    progress: bool = True,
) -> GenerationResult:
    """Decode every prompt, check each completion, score per task; write samples to `samples_path` (JSONL).

    `data` is a file path, hub name, list of rows or list of `EvalRecord`. `checker` is the default for
    records without a ``checker`` field. `batch_size` counts sequences (prompts x n). The global RNG is
    left as it was (sampling runs in a forked RNG seeded with `seed`), so training is not perturbed.
    """
    records = data if data and isinstance(data[0], EvalRecord) else load_records(data, split, tasks, limit)
    if not records:
        raise UserError("no records to evaluate")
    for name in {r.checker or checker for r in records}:  # unknown names fail now, not after decoding
        get_checker(name)
    was_training = model.training
    model.eval()
    prompts_per_batch = max(1, batch_size // n)
    samples: list[dict[str, Any]] = []
    correct: dict[str, list[list[bool]]] = {}
    devices = [model.device] if model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), _progress(len(records), progress) as bar:
            torch.manual_seed(seed)
            job = bar.add_task("eval", total=len(records))
            for start in range(0, len(records), prompts_per_batch):
                batch = records[start : start + prompts_per_batch]
                texts = [render_prompt(tokenizer, r.prompt) for r in batch]
                outs = generate(
                    model,
                    tokenizer,
                    [r.prompt for r in batch],
                    n=n,
                    temperature=temperature,
                    top_p=top_p,
                    max_new_tokens=max_new_tokens,
                )
                for i, (record, text, completions) in enumerate(zip(batch, texts, outs, strict=True)):
                    check = get_checker(record.checker or checker)
                    verdicts = [check(c, record.reference) for c in completions]
                    correct.setdefault(record.task, []).append([v.correct for v in verdicts])
                    for j, (c, v) in enumerate(zip(completions, verdicts, strict=True)):
                        samples.append(
                            {
                                "index": start + i,
                                "sample": j,
                                "task": record.task,
                                "prompt": text,
                                "output": c,
                                "reference": record.reference,
                                "extracted": v.extracted,
                                "correct": v.correct,
                                "checker": record.checker or checker,
                            }
                        )
                bar.advance(job, len(batch))
    finally:
        model.train(was_training)
    result = GenerationResult(
        n,
        {t: score(c) for t, c in correct.items()},
        score([c for cs in correct.values() for c in cs]),
        samples,
    )
    if samples_path is not None:
        write_jsonl(samples, samples_path)
    return result
