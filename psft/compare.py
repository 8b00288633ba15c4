"""`psft compare` and `psft demo`: several methods on one config, same data, steps and schedule.

Each method is a set of `PSFTConfig` overrides (its `loss_type`, learning rate, K, warm-up, ...) on top of
shared training settings; a sweep multiplies methods by values of a field. Every run starts from the same
base model with the same data order, is evaluated along the way (generation accuracy in-domain and
out-of-domain, drift from the base) by `psft.eval.EvalCallback`, and the results go to `report.json`, a
terminal table and PNG plots: entropy and clip ratio over training, the in-domain vs out-of-domain
trade-off of every checkpoint of every run (the Pareto view), and drift.

    psft compare --config compare.yaml [--output_dir DIR] [--quick] [--rl RL_YAML] [--dpo DPO_YAML]   # see psft.rl, psft.dpo
    psft demo [--quick] [--output_dir DIR] [--model PATH]  # the tiny model and its suite, or a real instruct model
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from psft.errors import UserError

console = Console(stderr=True)

# Shared training settings of the demo: the paper's regime at toy scale (a small fixed in-domain set seen
# for several epochs), on a CPU.
DEMO_TRAINING = {
    "per_device_train_batch_size": 32,
    "num_train_epochs": 12,
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 10,
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,
    "max_length": 128,
    "assistant_only_loss": True,
}
DEMO_LR = 3e-4
DEMO_METHODS = [
    {"name": "sft", "loss_type": "sft", "learning_rate": DEMO_LR},
    {"name": "psft-K8", "loss_type": "psft", "mini_batches_per_rollout": 8, "learning_rate": DEMO_LR},
    # tuned SFT baselines for the matched-progress view: a lower learning rate, and a warm-up
    {"name": "sft-lr/3", "loss_type": "sft", "learning_rate": DEMO_LR / 3},
    {"name": "sft-warmup", "loss_type": "sft", "learning_rate": DEMO_LR, "warmup_steps": 64},
]

# Defaults for any other base model, taken to be a real instruct model (e.g. SmolLM2-135M-Instruct made by
# `psft convert`): in-domain word problems with boxed answers; out-of-domain everyday knowledge, format
# instructions and two of the suite's general tasks (what the model forgets), a learning rate for full fine-tuning of a ~100M-1B model, float32 on a CPU.
INSTRUCT_LR = 5e-5
INSTRUCT_DEFAULTS: dict[str, Any] = {
    "train_data": "psft/word_math",
    "in_domain": ["psft/word_math"],
    "out_of_domain": ["psft/trivia", "psft/instruct", "psft/add", "psft/json"],
    "eval_size": 16,
    "eval_every": 8,
    "max_new_tokens": 64,
    "methods": [
        {"name": "sft", "loss_type": "sft", "learning_rate": INSTRUCT_LR},
        {"name": "psft-K4", "loss_type": "psft", "mini_batches_per_rollout": 4, "learning_rate": INSTRUCT_LR},
    ],
    "training": {
        "per_device_train_batch_size": 8,
        "max_steps": 16,
        "lr_scheduler_type": "constant",
        "weight_decay": 0.1,
        "max_grad_norm": 1.0,
        "max_length": 256,
        "assistant_only_loss": True,
    },
}


@dataclass
class CompareConfig:
    """What `psft compare` runs. Every field can be set in the YAML file."""

    model: str = "psft/tiny-base"  # base model: hub name, local directory or psft/tiny-base
    train_data: str = "psft/arith"  # training set: hub name, local file or built-in task
    in_domain: list[str] = field(default_factory=lambda: ["psft/arith"])  # evaluation sets (test split)
    out_of_domain: list[str] = field(
        default_factory=list
    )  # general tasks; default: the suite's general tasks
    eval_size: int = 25  # prompts per evaluation set
    eval_every: int = 0  # optimizer steps between evaluations (0: 4 per run, plus one at the start)
    max_new_tokens: int = 40
    methods: list[dict[str, Any]] = field(default_factory=lambda: [dict(m) for m in DEMO_METHODS])
    sweep: dict[str, list[Any]] = field(default_factory=dict)  # field -> values, applied to every method
    training: dict[str, Any] = field(default_factory=lambda: dict(DEMO_TRAINING))  # shared PSFTConfig fields
    output_dir: str = "runs/compare"
    seed: int = 0
    save_models: bool = False  # save each method's final model in its run directory (`--rl` sets it)
    dtype: str = "float32"  # weights' dtype for training and evaluation (`psft train`'s default too)
    checker: str | None = None  # for evaluation records without a `checker` field; None: math or exact by data

    @classmethod
    def from_yaml(cls, path: str) -> CompareConfig:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"{path}: {err}") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a YAML mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(
                f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls.for_model(**raw)

    @classmethod
    def for_model(cls, **fields_: Any) -> CompareConfig:
        """A config whose unset fields suit its `model`: the tiny model's suite for `psft/tiny-base`,
        `INSTRUCT_DEFAULTS` for any other (a real instruct model)."""
        from psft.tiny import BUILTIN_MODEL_NAME

        if fields_.get("model", BUILTIN_MODEL_NAME) != BUILTIN_MODEL_NAME:
            fields_ = {**copy.deepcopy(INSTRUCT_DEFAULTS), **fields_}
        return cls(**fields_)

    def runs(self) -> list[dict[str, Any]]:
        """The methods, each with a unique `name`, multiplied by the sweep."""
        methods = []
        for i, method in enumerate(self.methods):
            if not isinstance(method, dict) or "loss_type" not in method:
                raise UserError(f"methods[{i}]: each method is a mapping with at least a loss_type")
            methods.append({"name": method.get("name", method["loss_type"]), **method})
        if not self.sweep:
            runs = methods
        else:
            keys = list(self.sweep)
            runs = []
            for method in methods:
                for values in itertools.product(*(self.sweep[k] for k in keys)):
                    suffix = ",".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
                    runs.append(
                        {
                            **method,
                            **dict(zip(keys, values, strict=True)),
                            "name": f"{method['name']}[{suffix}]",
                        }
                    )
        names = [r["name"] for r in runs]
        if len(set(names)) != len(names):
            raise UserError(f"method names must be unique, got {names}")
        return runs


def quick(config: CompareConfig) -> CompareConfig:
    """A small version of `config` for tests and a first look: fewer prompts, steps and methods."""
    config.eval_size = min(config.eval_size, 8)
    config.max_new_tokens = min(config.max_new_tokens, 32)
    config.training = {**config.training, "num_train_epochs": 1, "max_steps": 12}
    config.methods = config.methods[:2]
    config.eval_every = 12  # at the start and the end
    return config


def _eval_records(config: CompareConfig) -> tuple[list[dict], list[dict]]:
    """(in-domain records, out-of-domain records) from the test splits; drift is measured on the latter."""
    from psft.data import load_sft_dataset
    from psft.tasks import GENERAL_TASKS

    out_of_domain = config.out_of_domain or [f"psft/{task}" for task in GENERAL_TASKS]

    def rows(names: list[str], group: str) -> list[dict]:
        out = []
        for name in names:
            dataset = load_sft_dataset(name, split="test")
            for row in dataset.select(range(min(config.eval_size, len(dataset)))):
                out.append({**row, "task": row.get("task") or name, "group": group})
        return out

    in_domain, general = rows(config.in_domain, "in_domain"), rows(out_of_domain, "out_of_domain")
    return in_domain, general


def _group_accuracy(logs: dict[str, float], tasks: list[str]) -> float | None:
    values = [logs[f"gen/{t}/avg@1"] for t in tasks if f"gen/{t}/avg@1" in logs]
    return sum(values) / len(values) if values else None


def run_method(config: CompareConfig, run: dict[str, Any], records: tuple, out_dir: Path) -> dict[str, Any]:
    """Train one method with periodic evaluation; return its curves and evaluation points."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from psft.config import PSFTConfig
    from psft.data import load_sft_dataset
    from psft.eval.callback import EvalCallback
    from psft.eval.checkers import infer_checker
    from psft.eval.records import load_records, render_text
    from psft.tiny import resolve_model_name
    from psft.trainer import PSFTTrainer

    in_domain, general = records
    overrides = {k: v for k, v in run.items() if k != "name"}
    settings = {
        "bf16": False,
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 5,
        "disable_tqdm": True,
        "seed": config.seed,
        **config.training,
        **overrides,
        "output_dir": str(out_dir),
    }
    try:
        args = PSFTConfig(**settings)
    except TypeError as err:
        raise UserError(f"method {run['name']!r}: {err}") from None
    model_path = resolve_model_name(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=config.dtype)
    train = load_sft_dataset(config.train_data)
    trainer = PSFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    steps = trainer.args.max_steps if trainer.args.max_steps > 0 else _planned_steps(trainer)
    every = config.eval_every or max(1, steps // 4)
    EvalCallback(
        tokenizer,
        every_n_steps=every,
        data=in_domain + general,
        drift_texts=[render_text(tokenizer, row) for row in general],
        # one big batch: on a CPU a decoding step costs about the same for 1 or 256 prompts of a tiny model
        generation_kwargs={
            "max_new_tokens": config.max_new_tokens,
            "batch_size": 256,
            "checker": config.checker or infer_checker(load_records(in_domain + general)),
        },
    ).attach(trainer)
    start = time.time()
    trainer.train()
    if config.save_models:
        trainer.save_model(str(out_dir))
    in_tasks = sorted({r["task"] for r in in_domain})
    out_tasks = sorted({r["task"] for r in general})
    curves, evals = [], []
    for entry in trainer.state.log_history:
        if "nll" in entry:
            curves.append({k: v for k, v in entry.items() if isinstance(v, (int, float))})
        if any(k.startswith("gen/") for k in entry):
            evals.append(
                {
                    "step": entry["step"],
                    "in_domain": _group_accuracy(entry, in_tasks),
                    "out_of_domain": _group_accuracy(entry, out_tasks),
                    "drift_kl": entry.get("drift/kl"),
                    "tasks": {t: entry.get(f"gen/{t}/avg@1") for t in in_tasks + out_tasks},
                }
            )
    return {
        "name": run["name"],
        "overrides": overrides,
        "curves": curves,
        "evals": evals,
        "steps": trainer.state.global_step,
        "runtime_s": round(time.time() - start, 1),
    }


def _planned_steps(trainer) -> int:
    dataloader = trainer.get_train_dataloader()
    accumulation = trainer.args.gradient_accumulation_steps
    per_epoch = max(1, -(-len(dataloader) // accumulation)) * trainer.args.rollout_epochs
    return int(per_epoch * trainer.args.num_train_epochs)


def compare(config: CompareConfig) -> dict[str, Any]:
    """Run every method, write `report.json` and the plots under `config.output_dir`, print the table."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = config.runs()
    records = _eval_records(config)
    results = []
    for index, run in enumerate(runs, start=1):
        console.print(f"[bold][{index}/{len(runs)}] {run['name']}[/bold]: {run}")
        result = run_method(config, run, records, out / _safe(run["name"]))
        final = result["evals"][-1] if result["evals"] else {}
        console.print(
            f"  done in {result['runtime_s']}s: in-domain {_pct(final.get('in_domain'))}, "
            f"out-of-domain {_pct(final.get('out_of_domain'))}"
        )
        results.append(result)
    report = {"config": asdict(config), "runs": results}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print_table(results)
    from psft.plots import plot_report

    for path in plot_report(report, out):
        console.print(f"wrote {path}")
    console.print(f"wrote {out / 'report.json'}")
    return report


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def print_table(results: list[dict[str, Any]]) -> None:
    """Base and final accuracy, entropy and drift of every run."""
    table = Table(title="psft compare")
    for column in (
        "method",
        "steps",
        "in-domain (base → final)",
        "out-of-domain (base → final)",
        "entropy",
        "clip high",
        "drift KL",
    ):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in results:
        first, last = (r["evals"][0], r["evals"][-1]) if r["evals"] else ({}, {})
        curve = r["curves"][-1] if r["curves"] else {}
        clip = curve.get("clip_ratio/high")
        table.add_row(
            r["name"],
            str(r["steps"]),
            f"{_pct(first.get('in_domain'))} → {_pct(last.get('in_domain'))}",
            f"{_pct(first.get('out_of_domain'))} → {_pct(last.get('out_of_domain'))}",
            f"{curve.get('entropy', float('nan')):.3f}",
            "-" if clip is None else f"{clip:.3f}",
            "-" if last.get("drift_kl") is None else f"{last['drift_kl']:.4f}",
        )
    Console(width=max(120, Console().width)).print(table)


def _parser(prog: str, demo: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    if not demo:
        parser.add_argument("--config", required=True, help="YAML file with CompareConfig fields")
    else:
        parser.add_argument(
            "--model",
            help="base model directory (e.g. from `psft convert`): a real instruct model, with word problems "
            "in-domain and format instructions out-of-domain (default: the built-in tiny model and its suite)",
        )
    parser.add_argument("--output_dir", help="where runs, report.json and plots go")
    parser.add_argument("--quick", action="store_true", help="a small run (about 2 minutes on a laptop CPU)")
    parser.add_argument(
        "--rl",
        metavar="RL_YAML",
        help="then the same RL run (psft rl fields) from every method, into OUTPUT_DIR/rl",
    )
    parser.add_argument(
        "--dpo",
        metavar="DPO_YAML",
        help="then the same DPO run (psft dpo fields) from every method, into OUTPUT_DIR/dpo",
    )
    return parser


def main(argv: list[str]) -> int:
    """`psft compare --config FILE [--output_dir DIR] [--quick]`."""
    args = _parser("psft compare", demo=False).parse_args(argv)
    config = CompareConfig.from_yaml(args.config)
    return _run(config, args)


def demo_main(argv: list[str]) -> int:
    """`psft demo [--quick] [--output_dir DIR]`: compare on the built-in model and task suite."""
    args = _parser("psft demo", demo=True).parse_args(argv)
    fields_ = {"model": args.model} if args.model else {}
    return _run(CompareConfig.for_model(output_dir="runs/demo", **fields_), args)


def _run(config: CompareConfig, args: argparse.Namespace) -> int:
    if args.output_dir:
        config.output_dir = args.output_dir
    if args.quick:
        config = quick(config)
    rl = None
    if args.rl:  # SFT->RL vs PSFT->RL: the same RL budget from each method's final model
        from psft.rl import format_report, load_rl_config, run_rl_stage

        rl = load_rl_config(args.rl, str(Path(config.output_dir) / "rl"))
        config.save_models = True
    dpo = None
    if args.dpo:  # SFT->DPO vs PSFT->DPO: the same DPO run from each method's final model
        from psft.dpo import load_dpo_config

        dpo = load_dpo_config(args.dpo, str(Path(config.output_dir) / "dpo"))
        config.save_models = True
    compare(config)
    if rl is not None:
        rl_args, rl_config = rl
        out = Path(config.output_dir)
        report = run_rl_stage(
            {run["name"]: str(out / _safe(run["name"])) for run in config.runs()},
            rl_config,
            rl_args.dataset_name,
            in_domain=config.in_domain,
            out_of_domain=config.out_of_domain or "psft/general",
            eval_limit=config.eval_size,
            max_new_tokens=config.max_new_tokens,
            eval_batch_size=rl_args.eval_batch_size,
        )
        print(format_report(report))
    if dpo is not None:
        from psft.dpo import run_after_compare

        out = Path(config.output_dir)
        run_after_compare(
            {run["name"]: str(out / _safe(run["name"])) for run in config.runs()},
            dpo,
            base_model=config.model,
            in_domain=config.in_domain,
            out_of_domain=config.out_of_domain or "psft/general",
            eval_limit=config.eval_size,
            max_new_tokens=config.max_new_tokens,
        )
    return 0
