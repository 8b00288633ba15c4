"""Evaluation decoding: `evaluate_generation`'s greedy decoding (`decoder="fast"`: length-bucketed batches,
finished rows dropped from the batch and its KV cache) against the decoding before it (`decoder="hf"`:
records in order, one `model.generate` per batch, every row computed until the batch's last one stops), on
a study's evaluation prompts. Prints one JSON object.

    python benchmarks/bench_generate.py --size tiny
    PSFT_BENCH_SMOLLM2=DIR python benchmarks/bench_generate.py --size smollm2 --rounds 3

Both run in this process in alternating rounds (the order flips every round), so slow phases of a shared
machine hit both; the ratio is old time / new time per round (paired), reported as median, min and max. Each
round checks that both decoders gave the same completions and verdicts. Useful tokens are the tokens the
completions need: up to and including the stop token (or the whole budget where a row did not stop).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import make_model, median, pretrained_path, setup_malloc, spread  # noqa: E402

from psft.data.models import resolve_model_name
from psft.data.sft import builtin_rows  # noqa: E402
from psft.eval.generate import evaluate_generation  # noqa: E402

# the evaluation sets of the studies: `psft demo` on the tiny model (psft.experiments.plan), and the instruct-model
# defaults on SmolLM2 (psft.experiments.presets.INSTRUCT_DEFAULTS); max_new_tokens as there
SETS = {
    "tiny": (["arith", "reverse", "upper", "add", "length", "json", "brackets"], 40),
    "smollm2": (["word_math", "trivia", "instruct", "add", "json"], 64),
}


def load(size: str):
    from transformers import AutoTokenizer

    model = make_model(size).eval()
    path = pretrained_path(size) if size == "smollm2" else resolve_model_name("psft/tiny-base")
    return model, AutoTokenizer.from_pretrained(path)


def rows(size: str, per_set: int) -> list[dict[str, Any]]:
    return [
        r
        for task in SETS[size][0]
        for r in builtin_rows(f"psft/{task}", "test", "prompt_completion")[:per_set]
    ]


def run_static(model, tok, data, batch: int, max_new_tokens: int) -> tuple[float, list[str]]:
    """The old path (records in order, `model.generate`) with a static KV cache (no torch.compile)."""
    from psft.eval.generate import _encode_rendered, _generate_hf, stop_token_ids
    from psft.eval.records import load_records, render_prompt

    start = time.perf_counter()
    records = load_records(data)
    ids = [_encode_rendered(tok, render_prompt(tok, r.prompt), isinstance(r.prompt, str)) for r in records]
    greedy = dict(
        do_sample=False, temperature=None, top_p=None, top_k=None, min_p=None, repetition_penalty=None
    )
    stops, outputs = stop_token_ids(model, tok), []
    for i in range(0, len(ids), batch):
        rows = _generate_hf(
            model, ids[i : i + batch], stops, tok.pad_token_id, 1, {**greedy, "cache_implementation": "static"},
            max_new_tokens,
        )  # fmt: skip
        outputs += [tok.decode(r, skip_special_tokens=True) for r in rows]
    return time.perf_counter() - start, outputs


def run(model, tok, data, decoder: str, batch: int, max_new_tokens: int) -> tuple[float, Any]:
    if decoder == "hf-static":
        return run_static(model, tok, data, batch, max_new_tokens)
    start = time.perf_counter()
    result = evaluate_generation(
        model, tok, data, max_new_tokens=max_new_tokens, batch_size=batch, checker="math", progress=False,
        decoder=decoder,
    )  # fmt: skip
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SETS), default="tiny")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per evaluation set")
    parser.add_argument("--max-new-tokens", type=int, help="default: the study's (tiny 40, smollm2 64)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--batch", type=int, default=256, help="batch size of both (psft compare passes 256: one batch)"
    )
    parser.add_argument(
        "--new-batch", type=int, nargs="*", default=[], help="extra batch sizes of the new decoder"
    )
    parser.add_argument("--static", action="store_true", help="also the old path with a static KV cache")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="seconds: 2 prompts a set, 8 tokens, 1 round")
    args = parser.parse_args()
    if args.smoke:
        args.prompts, args.max_new_tokens, args.rounds = 2, 8, 1
    torch.set_num_threads(args.threads)
    malloc = setup_malloc(False)
    max_new = args.max_new_tokens or SETS[args.size][1]
    model, tok = load(args.size)
    data = rows(args.size, args.prompts)
    variants = {"old": ("hf", args.batch), "new": ("fast", args.batch)}
    variants |= {f"new-batch{b}": ("fast", b) for b in args.new_batch}
    for decoder, batch in variants.values():  # warm-up (first calls allocate and load kernels)
        run(model, tok, data[:2], decoder, batch, 4)
    if args.static:
        variants["old-static-cache"] = ("hf-static", args.batch)
        run(model, tok, data[:2], "hf-static", args.batch, 4)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {v: [] for v in variants}
    results: dict[str, Any] = {}
    equal = True
    for r in range(args.rounds):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            seconds, result = run(model, tok, data, *variants[name], max_new)
            times[name].append(seconds)
            results[name] = result
        reference = [(s["output"], s["correct"]) for s in results["old"].samples]
        equal &= all(
            [(s["output"], s["correct"]) for s in results[v].samples] == reference
            for v in variants
            if v != "old-static-cache"
        )
        if args.static:
            static_equal = results["old-static-cache"] == [s["output"] for s in results["old"].samples]
    samples = results["new"].samples
    useful = sum(s["new_tokens"] + s["stopped"] for s in samples)
    report: dict[str, Any] = {
        "size": args.size,
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "malloc": malloc,
        "sets": SETS[args.size][0],
        "prompts": len(data),
        "max_new_tokens": max_new,
        "rounds": args.rounds,
        "useful_new_tokens": useful,
        "stopped_fraction": sum(s["stopped"] for s in samples) / len(samples),
        "accuracy": results["new"].overall.avg,
        "same_completions_and_verdicts": equal,
        **({"static_cache_same_completions": static_equal} if args.static else {}),
        "load_average_before_after": [round(x, 2) for x in load_before + os.getloadavg()],
    }
    for name, (decoder, batch) in variants.items():
        t = median(times[name])
        report[name] = {
            "decoder": decoder,
            "batch_size": batch,
            "seconds": [round(x, 3) for x in times[name]],
            "median_s": round(t, 3),
            "noise": round(spread(times[name]), 3),
            "useful_tokens_per_s": round(useful / t, 2),
            "prompts_per_s": round(len(data) / t, 3),
        }
        if name != "old":
            ratios = [o / n for o, n in zip(times["old"], times[name], strict=True)]
            report[name]["speedup_per_round"] = [round(x, 3) for x in ratios]
            report[name]["speedup"] = {
                "median": round(statistics.median(ratios), 3),
                "min": round(min(ratios), 3),
                "max": round(max(ratios), 3),
            }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
