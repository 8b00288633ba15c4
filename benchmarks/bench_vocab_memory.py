"""Memory of the old-policy pass as the vocabulary grows, on one small trunk: the trainer's pass (TRL's fused
head, as the training forward runs it) against the naive full logits + log-softmax, and the size of the full
logits. Prints JSON.

    python benchmarks/bench_vocab_memory.py

Each number comes from a fresh process (`bench_psft.py --probe`), over K - 1 passes on one micro-batch: the peak
of the tensors a pass holds at once (`tensor_mb`: the profiler's allocation records on CPU, `max_memory_allocated`
on GPU) and the RSS it added (`added_mb`, which depends on what malloc had cached).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import SIZES  # noqa: E402
from bench_psft import run_probe  # noqa: E402

VOCABS = [8192, 32768, 65536, 151936, 262144]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(set(SIZES) - {"tiny"}), default="bigvocab")
    parser.add_argument("--batch", type=int, help="micro-batch size (default: the size's)")
    parser.add_argument("--vocabs", type=int, nargs="+", default=VOCABS)
    parser.add_argument("--smoke", action="store_true", help="two small vocabularies: checks it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.vocabs, args.batch = [512, 1024], 2
    s = SIZES[args.size]
    batch = args.batch or s.batch
    tokens = batch * (s.prompt_len + s.completion_len)
    rows = []
    for vocab in args.vocabs:
        old, full = (run_probe(args.size, batch, kind, 3, 1, vocab) for kind in ("old", "old_full"))
        rows.append(
            {
                "vocab": vocab,
                "old_pass_tensor_mb": round(old["tensor_mb"], 1),
                "full_logits_pass_tensor_mb": round(full["tensor_mb"], 1),
                "old_pass_added_mb": round(old["added_mb"], 1),
                "full_logits_mb": round(tokens * vocab * 4 / 2**20, 1),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)  # progress
    report = {"size": args.size, "batch": batch, "tokens": tokens, "loss_tokens": batch * s.completion_len}
    report["rows"] = rows
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
