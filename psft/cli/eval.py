"""`psft eval`: generation accuracy, lm-eval tasks and drift for a saved model.

    psft eval --model out/ckpt --data test.jsonl [--task add] [--n 8 --temperature 0.7 --top-p 0.95]
    psft eval --model out/ckpt --lm-eval-tasks mytask --lm-eval-include tasks/
    psft eval --model out/ckpt --drift-base base/ --drift-data heldout.jsonl

Writes ``metrics.json`` (and ``samples.jsonl`` for generation) to ``--output``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from psft.cli.args import ArgumentParser
from psft.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="psft eval", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", required=True, help="checkpoint directory (model + tokenizer), psft/tiny-base or hub id"
    )
    p.add_argument("--data", help="JSON/JSONL/Parquet file or hub dataset name with prompts and references")
    p.add_argument("--split", default="test", help="split of a hub dataset (default: test)")
    p.add_argument("--task", action="append", help="evaluate only records with this task (repeatable)")
    p.add_argument(
        "--checker",
        help="checker for records without a 'checker' field (default: math if every such reference is a "
        "number or a \\boxed{} answer, else exact; the choice is printed)",
    )
    p.add_argument(
        "--no-chat-template",
        action="store_true",
        help="feed string prompts as raw text (default: as a user message through the model's chat template)",
    )
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module that registers checkers (repeatable); psft.tasks is always imported",
    )
    p.add_argument("--n", type=int, default=1, help="samples per prompt (avg@n, pass@n); needs --temperature")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="decoding budget (default: what the model holds: its max_position_embeddings minus the longest prompt)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="sequences per generation batch")
    p.add_argument("--limit", type=int, help="evaluate only the first N records")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="eval_out", help="directory for metrics.json and samples.jsonl")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--threads", type=int, help="CPU threads for torch (default: OMP_NUM_THREADS, else the idle CPUs)"
    )
    p.add_argument("--lm-eval-tasks", help="comma-separated lm-eval task names")
    p.add_argument("--lm-eval-include", help="directory of custom lm-eval task YAMLs")
    p.add_argument("--drift-base", help="base checkpoint to measure drift from (needs --drift-data)")
    p.add_argument(
        "--drift-data", help="held-out text: file with 'text', 'messages' or prompt+completion rows"
    )
    p.add_argument("--drift-stats", help="precomputed base statistics file (instead of --drift-base)")
    p.add_argument("--drift-top-k", type=int, default=64, help="base log-probs kept per position")
    return p


def load_model(name: str, device: str):
    """Model and tokenizer from a checkpoint directory, ``psft/tiny-base`` or a hub id; UserError if none."""
    from psft.data.models import is_hub_name, load_model, load_tokenizer, resolve_model_name

    path = resolve_model_name(name)
    if not Path(path).is_dir() and not is_hub_name(path):
        raise UserError(f"model directory not found: {name}")
    try:
        tokenizer = load_tokenizer(path)
        model = load_model(path, "auto").to(device)
    except (OSError, ValueError) as err:
        raise UserError(f"{name}: cannot load model/tokenizer: {str(err).splitlines()[0]}") from err
    return model.eval(), tokenizer


def default_max_new_tokens(model, tokenizer, records: list) -> int:
    """The decoding budget the model can hold: its `max_position_embeddings` minus the longest prompt
    (256 for a model that does not say); an error when a prompt leaves no room."""
    from psft.eval.generate import encode_prompt

    positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if not positions:
        return 256
    longest = max((len(encode_prompt(tokenizer, r.prompt)) for r in records), default=0)
    if longest >= positions:
        raise UserError(
            f"a prompt of {longest} tokens fills the model's {positions} positions: shorten it or drop it"
        )
    return positions - longest


def _drift_texts(data: str, tokenizer) -> list[str]:
    from psft.eval.records import load_rows, render_text

    texts = []
    for i, row in enumerate(load_rows(data)):
        try:
            texts.append(render_text(tokenizer, row))
        except UserError as err:
            raise UserError(f"{data}:{i + 1}: {err}") from err
    return texts


def _as_chat(records: list, tokenizer, raw: bool, metrics: dict) -> list:
    """String prompts become one user message when the model has a chat template (an instruct model answers
    raw text as a document to continue); `raw` (--no-chat-template) keeps them as they are."""
    from dataclasses import replace

    chat = not raw and bool(getattr(tokenizer, "chat_template", None))
    metrics["chat_template"] = chat
    if not chat:
        return records
    return [replace(r, prompt=[{"role": "user", "content": r.prompt}]) if isinstance(r.prompt, str) else r for r in records]


def import_plugins(modules: list[str]) -> None:
    """Import modules that register checkers: the built-in task suite's, then the user's."""
    for name in ["psft.tasks", *modules]:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise UserError(f"--import {name}: {err}") from err


def run(args: argparse.Namespace) -> dict:
    """Run what the arguments ask for; returns the metrics (also written to ``--output/metrics.json``)."""
    import torch

    import_plugins(args.imports)
    from psft.eval.checkers import infer_checker
    from psft.eval.drift import compute_reference_stats, measure_drift
    from psft.eval.generate import evaluate_generation
    from psft.eval.records import load_records, load_rows

    if not (args.data or args.lm_eval_tasks or args.drift_base or args.drift_stats):
        raise UserError("nothing to evaluate: give --data, --lm-eval-tasks, or --drift-base/--drift-stats")
    if args.n > 1 and args.temperature <= 0:
        raise UserError("--n > 1 needs --temperature > 0 (greedy samples are identical)")
    if args.drift_base and not args.drift_data:
        raise UserError("--drift-base needs --drift-data (the held-out text)")
    # read the data before loading any model, so mistakes in it show up at once
    records = load_records(args.data, args.split, args.task, args.limit) if args.data else None
    if args.drift_data:
        load_rows(args.drift_data)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"model": args.model}
    stats = args.drift_stats
    if args.drift_base:  # base first, then freed: never two models in memory
        base, base_tok = load_model(args.drift_base, device)
        stats = compute_reference_stats(
            base,
            base_tok,
            _drift_texts(args.drift_data, base_tok),
            out / "drift_base_stats.safetensors",
            top_k=args.drift_top_k,
        )
        del base
    model, tokenizer = load_model(args.model, device)
    if args.data:
        records = _as_chat(records, tokenizer, args.no_chat_template, metrics)
        checker = args.checker or infer_checker(records)
        metrics["checker"] = checker
        unnamed = sum(1 for r in records if not r.checker)
        how = "--checker" if args.checker else "auto: math if every reference is a number or \\boxed{}, else exact"
        print(
            f"checker for records without a 'checker' field: {checker} ({how}; {unnamed} of {len(records)} records)"
        )
        result = evaluate_generation(
            model,
            tokenizer,
            records,
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens or default_max_new_tokens(model, tokenizer, records),
            batch_size=args.batch_size,
            checker=checker,
            seed=args.seed,
            samples_path=out / "samples.jsonl",
        )
        metrics["generation"] = result.summary()
    if stats:
        metrics["drift"] = measure_drift(model, stats).summary()
    if args.lm_eval_tasks:
        from psft.eval.lmeval import lm_eval_metrics, run_lm_eval

        results = run_lm_eval(
            model,
            args.lm_eval_tasks.split(","),
            tokenizer=tokenizer,
            include_path=args.lm_eval_include,
            limit=args.limit,
            seed=args.seed,
        )
        metrics["lm_eval"] = lm_eval_metrics(results, prefix="lm_eval")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return metrics


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_table(metrics: dict) -> None:
    """Scores as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"psft eval: {metrics['model']}")
    for col in ("what", "value", "stderr / note"):
        table.add_column(col)
    gen = metrics.get("generation")
    if gen:
        n = gen["n"]
        for name, s in [("all", gen["overall"])] + sorted(gen["tasks"].items()):
            table.add_row(
                f"{name} avg@{n} ({s['num_prompts']} prompts)", f"{s['avg']:.4f}", _fmt(s["avg_stderr"])
            )
            if n > 1:
                table.add_row(f"{name} pass@{n}", f"{s['pass_']:.4f}", _fmt(s["pass_stderr"]))
    drift = metrics.get("drift")
    if drift:
        note = "exact" if drift["exact"] else f"lower bound, top-{drift['top_k']}"
        table.add_row("drift KL(base||model)", f"{drift['kl']:.5f}", note)
        table.add_row(
            "drift logprob change", f"{drift['logprob_change']:.5f}", f"{drift['num_tokens']} tokens"
        )
    for key, value in metrics.get("lm_eval", {}).items():
        table.add_row(key, f"{value:.4f}", "")
    Console().print(table)


def main(argv: list[str]) -> int:
    """Entry point for `psft eval`."""
    import time

    from psft.core.threads import configure_threads

    args = build_parser().parse_args(argv)
    configure_threads(args.threads)
    start = time.perf_counter()
    metrics = run(args)
    print_table(metrics)
    out = Path(args.output)
    wrote = [out / "metrics.json"] + ([out / "samples.jsonl"] if "generation" in metrics else [])
    print(f"psft eval: done in {time.perf_counter() - start:.1f} s; wrote {', '.join(map(str, wrote))}")
    return 0
