"""Generation evaluation: batched decoding, answer checking, avg@n / pass@n per task, JSONL samples.

Prompts are left-padded (a decoder-only model continues from the last position, so padding must come
first; the attention mask hides it). Decoding stops at EOS, the end-of-turn token or `max_new_tokens`.
Greedy decoding is ours (`_greedy`: the inputs `model.generate` builds, but a row leaves the batch and its KV
cache as soon as it stops, and prompts are batched by length); sampling is `model.generate`'s. On a CPU most
of a study's evaluation time is this decoding (benchmarks/README.md, "Evaluation").
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

from psft.data.validate import write_jsonl
from psft.errors import UserError
from psft.eval.checkers import get_checker
from psft.eval.records import EvalRecord, load_records, render_prompt

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
    return _encode_rendered(tokenizer, render_prompt(tokenizer, prompt), isinstance(prompt, str))


def _encode_rendered(tokenizer, text: str, plain: bool) -> list[int]:
    """Token ids of a rendered prompt: a plain text prompt gets the tokenizer's special tokens, a rendered
    chat template has its own."""
    return tokenizer(text, add_special_tokens=plain)["input_ids"]


def _left_pad(ids: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of a left-padded batch."""
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
    return input_ids, mask


def _cut(rows: list[list[int]], stops: list[int]) -> list[list[int]]:
    """Each row up to (not including) its first stop token."""
    stop = set(stops)
    return [row[: next((i for i, t in enumerate(row) if t in stop), len(row))] for row in rows]


@torch.inference_mode()
def _greedy(
    model, ids: list[list[int]], stops: list[int], pad_id: int, max_new_tokens: int
) -> list[list[int]]:
    """Greedy decoding of a left-padded batch that drops each row from the batch (its KV cache included) as
    soon as it emits a stop token, so finished rows stop costing compute; the new tokens of each row, cut
    before its stop token.

    The same inputs as `model.generate` (positions from the attention mask, a dynamic KV cache, logits of
    the last position only, float32 argmax), so the tokens are the same as `_generate_hf`'s greedy ones;
    `tests/test_eval_generate.py` and `tests/test_smollm2.py` check it. `model.generate` itself keeps every
    row in the batch until the last one stops.
    """
    from transformers import DynamicCache

    input_ids, mask = _left_pad(ids, pad_id, model.device)
    position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache(config=model.config)
    active = torch.arange(len(ids), device=model.device)  # original row of each batch row
    out: list[list[int]] = [[] for _ in ids]
    stop = torch.tensor(stops, device=model.device)
    supports = getattr(model, "_supports_logits_to_keep", None)  # as model.generate: the last position only
    last = {"logits_to_keep": 1} if supports is not None and supports() else {}
    for _ in range(max_new_tokens):
        logits = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position,
            cache=cache,
            use_cache=True,
            **last,
        ).logits
        tokens = logits[:, -1, :].float().argmax(-1)
        for row, token in zip(active.tolist(), tokens.tolist(), strict=True):
            out[row].append(token)
        done = torch.isin(tokens, stop)
        if done.all():
            break
        if done.any():
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            active, tokens, mask, position = active[keep], tokens[keep], mask[keep], position[keep]
        input_ids = tokens[:, None]
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
        position = position[:, -1:] + 1
    return _cut(out, stops)


@torch.no_grad()
def _generate_hf(
    model,
    ids: list[list[int]],
    stops: list[int],
    pad_id: int,
    n: int,
    sampling: dict[str, Any],
    max_new_tokens: int,
) -> list[list[int]]:
    """`model.generate` on one left-padded batch (`n` sequences per prompt, prompt-major): the new tokens of
    each sequence, cut before its first stop token. The sampling path, and greedy before the decoding of
    `_greedy` (kept for the benchmark's comparison and the tests' equality checks)."""
    input_ids, mask = _left_pad(ids, pad_id, model.device)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        eos_token_id=stops,
        pad_token_id=pad_id,
        **sampling,
    )
    return _cut(out[:, input_ids.shape[1] :].tolist(), stops)


def generate(
    model,
    tokenizer,
    prompts: list[str | list[dict[str, Any]]],
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    decoder: str = "fast",
) -> list[list[str]]:
    """`n` completions for each prompt (text or chat messages), decoded as one left-padded batch.

    Greedy when temperature == 0, else temperature + top-p sampling; the model's generation_config top_k,
    min_p and repetition_penalty are not applied, so the decoding is exactly the one given. Completions are
    cut at the first stop token and decoded without special tokens. Greedy decoding drops finished rows from
    the batch (`_greedy`); ``decoder="hf"`` runs `model.generate` instead (the same tokens, slower when the
    completions' lengths differ). Sampling always runs `model.generate`.
    """
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    return [
        [tokenizer.decode(t, skip_special_tokens=True) for t in row]
        for row in _decode_ids(model, tokenizer, ids, n, temperature, top_p, max_new_tokens, decoder)
    ]


def _decode_ids(
    model,
    tokenizer,
    ids: list[list[int]],
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    decoder: str,
) -> list[list[list[int]]]:
    """The new token ids of `n` completions per prompt (`generate` on token ids)."""
    if temperature == 0 and n > 1:
        raise ValueError("n > 1 needs sampling (temperature > 0); greedy samples would be identical")
    if decoder not in ("fast", "hf"):
        raise ValueError(f"decoder must be 'fast' or 'hf', got {decoder!r}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(model, tokenizer)
    if temperature == 0 and decoder == "fast":
        return [[row] for row in _greedy(model, ids, stops, pad_id, max_new_tokens)]
    # exactly the decoding asked for: switch off the model's generation_config extras (top_k, penalties)
    sampling: dict[str, Any] = dict(top_k=None, min_p=None, repetition_penalty=None)
    if temperature > 0:
        sampling.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        sampling.update(do_sample=False, temperature=None, top_p=None)
    rows = _generate_hf(model, ids, stops, pad_id, n, sampling, max_new_tokens)
    return [rows[i * n : (i + 1) * n] for i in range(len(ids))]


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
    decoder: str = "fast",
) -> GenerationResult:
    """Decode every prompt, check each completion, score per task; write samples to `samples_path` (JSONL).

    `data` is a file path, hub name, list of rows or list of `EvalRecord`. `checker` is the default for
    records without a ``checker`` field. `batch_size` counts sequences (prompts x n). The global RNG is
    left as it was (sampling runs in a forked RNG seeded with `seed`), so training is not perturbed.
    Greedy decoding runs the prompts shortest first (batches of similar length, little padding) and drops
    each finished row from its batch; ``decoder="hf"`` decodes as before (records in order, `model.generate`),
    with the same samples. Each sample also records ``new_tokens`` (its completion's length in tokens,
    before the stop token) and ``stopped`` (False where it ran out of `max_new_tokens`).
    """
    records = data if data and isinstance(data[0], EvalRecord) else load_records(data, split, tasks, limit)
    if not records:
        raise UserError("no records to evaluate")
    for name in {r.checker or checker for r in records}:  # unknown names fail now, not after decoding
        get_checker(name)
    was_training = model.training
    model.eval()
    prompts_per_batch = max(1, batch_size // n)
    texts = [render_prompt(tokenizer, r.prompt) for r in records]  # rendered and tokenized once
    ids = [
        _encode_rendered(tokenizer, text, isinstance(r.prompt, str))
        for r, text in zip(records, texts, strict=True)
    ]
    order = list(range(len(records)))
    if temperature == 0 and decoder == "fast":
        # length-bucketed batches: little left padding to compute in the prefill. Greedy tokens do not depend
        # on the batch; sampling keeps the records' order so that a seed draws the same samples as before
        order.sort(key=lambda i: len(ids[i]))
    tokens: list[list[list[int]]] = [[] for _ in records]
    samples: list[dict[str, Any]] = []
    correct: dict[str, list[list[bool]]] = {}
    devices = [model.device] if model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), _progress(len(records), progress) as bar:
            torch.manual_seed(seed)
            job = bar.add_task("eval", total=len(records))
            for start in range(0, len(records), prompts_per_batch):
                batch = order[start : start + prompts_per_batch]
                outs = _decode_ids(
                    model, tokenizer, [ids[i] for i in batch], n, temperature, top_p, max_new_tokens, decoder
                )
                for i, out in zip(batch, outs, strict=True):
                    tokens[i] = out
                bar.advance(job, len(batch))
        for index, (record, text, rows) in enumerate(zip(records, texts, tokens, strict=True)):
            check = get_checker(record.checker or checker)
            completions = [tokenizer.decode(row, skip_special_tokens=True) for row in rows]
            verdicts = [check(c, record.reference) for c in completions]
            correct.setdefault(record.task, []).append([v.correct for v in verdicts])
            for j, (c, v, row) in enumerate(zip(completions, verdicts, rows, strict=True)):
                samples.append(
                    {
                        "index": index,
                        "sample": j,
                        "task": record.task,
                        "prompt": text,
                        "output": c,
                        "reference": record.reference,
                        "extracted": v.extracted,
                        "correct": v.correct,
                        "checker": record.checker or checker,
                        "new_tokens": len(row),  # decoded tokens before the stop token
                        "stopped": len(row) < max_new_tokens,  # ended at a stop token, not at the budget
                    }
                )
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
