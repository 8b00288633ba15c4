"""`psft compare` and `psft demo`: several methods on one config, same data, steps and schedule, with seeds.

Each method is a set of `PSFTConfig` overrides (its `loss_type`, learning rate, K, warm-up, ...) on top of
shared training settings; a sweep multiplies methods by values of a field, and `seeds` repeats every setting
(the seed sets the data order). Every run starts from the same base model, is evaluated along the way
(generation accuracy in-domain and out-of-domain, drift from the base) by `psft.eval.EvalCallback`, and writes
`<output_dir>/<run>/result.json` the moment it ends. The report (`report.json`, `report.md`, a terminal table,
PNG plots) is rebuilt from the runs on disk (`psft.experiments.analysis`: means and 95% intervals over seeds, each
method's in-domain vs out-of-domain frontier, paired gaps and a verdict); a re-run skips finished runs.

    psft compare --config compare.yaml [--output_dir DIR] [--seeds 0 1 2] [--jobs N] [--quick] [--rl RL_YAML]
                 [--dpo DPO_YAML]               # then the same RL or DPO run from each method (psft.stages.rl, psft.stages.dpo)
    psft compare --report DIR                  # re-render the report of DIR from its finished runs
    psft demo [--quick | --full] [--output_dir DIR] [--jobs N] [--model PATH]   # the built-in tiny model and
                                               # its suite, or a real instruct model (psft convert)
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from psft.cli.args import ArgumentParser
from psft.errors import UserError
from psft.experiments.plan import CompareConfig, full_preset, full_preset_cost, quick, validate_plan
from psft.experiments.report import write_report
from psft.experiments.runner import compare

console = Console(stderr=True, soft_wrap=True)

def _parser(prog: str, demo: bool) -> argparse.ArgumentParser:
    description = __doc__.splitlines()[0]
    epilog = None
    if not demo:
        epilog = "CompareConfig fields (YAML):\n" + "\n".join(
            f"  {f.name:<17} {f.metadata.get('help', '')}" for f in fields(CompareConfig)
        )
    parser = ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if not demo:
        group = parser.add_mutually_exclusive_group()  # one of them is required: checked by _parse_args
        group.add_argument(
            "--config", help="YAML file of CompareConfig fields (listed below; examples/compare.yaml)"
        )
        group.add_argument(
            "--report",
            metavar="DIR",
            help="re-render report.json, report.md, table and plots of DIR; no training",
        )
    else:
        preset = parser.add_mutually_exclusive_group()
        preset.add_argument(
            "--quick",
            action="store_true",
            help="a smoke run: 2 methods x 12 steps (checks the pipeline, not a result)",
        )
        preset.add_argument(
            "--full",
            action="store_true",
            help=full_preset_cost(),
        )
        parser.add_argument(
            "--model",
            help="base model directory (e.g. from `psft convert`): a real instruct model, with word problems "
            "in-domain and format instructions out-of-domain (default: the built-in tiny model and its suite)",
        )
    if not demo:
        parser.add_argument(
            "--quick", action="store_true", help="a smoke run of the config (2 methods, 12 steps)"
        )
    parser.add_argument("--output_dir", help="where runs, report.json, report.md and plots go")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="seeds to repeat every run with")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs side by side in separate processes, CPU threads split between them",
    )
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


def _parse_args(argv: list[str], demo: bool) -> argparse.Namespace:
    """The command line of `psft compare` / `psft demo`. An unknown option is named before anything else (a
    missing --config must not hide it); a CompareConfig field given as a flag says it belongs in the YAML."""
    parser = _parser("psft demo" if demo else "psft compare", demo)
    args, extra = parser.parse_known_args(argv)
    if extra:
        name = extra[0].split("=", 1)[0]
        if name.startswith("--") and name[2:] in {f.name for f in fields(CompareConfig)}:
            where = "a compare YAML file (psft compare --config FILE)" if demo else "the --config YAML file"
            raise UserError(f"unknown option {name}: {name[2:]} is a CompareConfig field; set it in {where}")
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not demo and not (args.config or args.report):
        parser.error("one of the arguments --config --report is required")
    return args


def main(argv: list[str]) -> int:
    """`psft compare --config FILE [--output_dir DIR] [--seeds ...] [--jobs N] [--quick]`, or `--report DIR`."""
    args = _parse_args(argv, demo=False)
    if args.report:
        write_report(args.report)
        console.print(f"wrote {Path(args.report) / 'report.md'}, report.json and plots")
        return 0
    config = CompareConfig.from_yaml(args.config)
    return _run(config, args)


def demo_main(argv: list[str]) -> int:
    """`psft demo [--quick | --full] [--output_dir DIR] [--jobs N]`: compare on the built-in model and tasks."""
    args = _parse_args(argv, demo=True)
    fields_ = {"model": args.model} if args.model else {}
    if args.full:
        if args.model:
            raise UserError(
                "--full is the built-in model's research preset; for another model write a compare YAML "
                "(examples/compare.yaml) with its methods, sweep and seeds"
            )
        config = full_preset()
    elif args.quick:
        config = CompareConfig.for_model(output_dir="runs/demo-quick", **fields_)
    else:
        config = CompareConfig.for_model(output_dir="runs/demo", **fields_)
    return _run(config, args)


def _dropped(planned: list[dict[str, Any]], kept: list[dict[str, Any]]) -> list[str]:
    """What a shortened plan leaves out of the planned one, in words (settings and seeds)."""
    notes = []
    names = list(dict.fromkeys(r["name"] for r in planned))
    kept_names = {r["name"] for r in kept}
    if dropped := [n for n in names if n not in kept_names]:
        notes.append(
            f"runs {len(names) - len(dropped)} of the {len(names)} settings; left out: {', '.join(dropped)}"
        )
    seeds = list(dict.fromkeys(r["seed"] for r in planned))
    kept_seeds = list(dict.fromkeys(r["seed"] for r in kept))
    if missing := [s for s in seeds if s not in kept_seeds]:
        notes.append(
            f"runs seed(s) {', '.join(map(str, kept_seeds))} of {', '.join(map(str, seeds))}; left out: "
            f"{', '.join(map(str, missing))} (--seeds on the command line is honoured)"
        )
    return notes


def _run(config: CompareConfig, args: argparse.Namespace) -> int:
    if args.output_dir:
        config.output_dir = args.output_dir
    if args.seeds:
        config.seeds = args.seeds
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    if args.quick:
        planned = validate_plan(config, quiet=True)  # the whole plan, before --quick shortens it
        config = quick(config)
        if args.seeds:  # asked for on the command line: honoured
            config.seeds = args.seeds
        notes = _dropped(planned, config.runs())
        if config.reference_method is not None and config.reference_method not in config.method_names():
            notes.append(f"leaves out reference_method {config.reference_method}; the report compares with ")
            config.reference_method = None
            notes[-1] += str(config.reference())
        for note in notes:
            console.print(f"[yellow]--quick[/yellow] {escape(note)}")
        console.print(
            "[yellow]smoke run (--quick)[/yellow]: 12 steps check the pipeline end to end; the in-domain task is "
            "not learned this early, so its accuracies are not results (run `psft demo` for those)"
        )
    rl = None
    if args.rl:  # SFT->RL vs PSFT->RL: the same RL budget from each method's final model
        from psft.cli.rl import load_rl_config
        from psft.stages.chain import format_report
        from psft.stages.rl import run_rl_stage

        rl = load_rl_config(args.rl, str(Path(config.output_dir) / "rl"))
        config.save_models = True
    dpo = None
    if args.dpo:  # SFT->DPO vs PSFT->DPO: the same DPO run from each method's final model
        from psft.cli.dpo import load_dpo_config

        dpo = load_dpo_config(args.dpo, str(Path(config.output_dir) / "dpo"))
        config.save_models = True
    compare(config, jobs=args.jobs)
    out = Path(config.output_dir)
    # each method's final model, the start of the next stage; one seed: named by setting, several: by run
    starts = {
        run["name"] if len(config.seeds) == 1 else run["id"]: str(out / run["id"]) for run in config.runs()
    }
    evaluation = dict(
        base_model=config.model,
        in_domain=config.in_domain,
        out_of_domain=config.out_of_domain or "psft/general",
        eval_limit=config.eval_size,
        max_new_tokens=config.max_new_tokens,
    )
    if rl is not None:
        rl_args, rl_config = rl
        report = run_rl_stage(
            starts, rl_config, rl_args.dataset_name, eval_batch_size=rl_args.eval_batch_size, **evaluation
        )
        print(format_report(report))
    if dpo is not None:
        from psft.stages.dpo import run_after_compare

        run_after_compare(starts, dpo, **evaluation)
    return 0
