"""A `psft compare` plan: `CompareConfig` (methods as `PSFTConfig` overrides on shared training settings, a
sweep, seeds), the runs it expands to, and the quick and full presets' configs. The whole plan is validated
before the first run trains.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from psft.errors import UserError, did_you_mean, first_line
from psft.experiments.presets import (
    DEMO_METHODS,
    DEMO_TRAINING,
    FULL_EVAL_SIZE,
    FULL_METHODS,
    FULL_OOD_EVAL_SIZE,
    FULL_RUN_EVAL_S,
    FULL_RUN_TRAIN_S,
    FULL_SEEDS,
    INSTRUCT_DEFAULTS,
)

console = Console(stderr=True, soft_wrap=True)  # progress lines stay one line each, even in a log file


def full_preset_cost() -> str:
    """One line for `--help`: the research preset's runs, cost per run and in total, and `--jobs` guidance."""
    runs = len(full_preset().runs())
    hours = runs * (FULL_RUN_TRAIN_S + FULL_RUN_EVAL_S) / 3600
    return (
        f"the research preset: 6 methods, each over its own learning-rate grid, x 5 seeds = {runs} runs; one run "
        f"takes ~{FULL_RUN_TRAIN_S} s training + ~{FULL_RUN_EVAL_S} s evaluation on one idle core, ~{hours:.0f} h "
        f"in all; on a 2-core machine use --jobs 2 (~{hours / 2:.1f} h), more jobs than cores only slow each other"
    )


@dataclass
class CompareConfig:
    """What `psft compare` runs. Every field can be set in the YAML file (`examples/compare.yaml`)."""

    model: str = field(
        default="psft/tiny-base", metadata={"help": "base model: hub name, local directory or psft/tiny-base"}
    )
    train_data: str = field(
        default="psft/arith",
        metadata={"help": "training set: hub name, local file or built-in task (psft/<task>)"},
    )
    train_size: int | None = field(
        default=None,
        metadata={
            "help": "train on the first N records of train_data only (a small set seen for many epochs, the "
            "paper's regime); null: all of it"
        },
    )
    in_domain: list[str] = field(
        default_factory=lambda: ["psft/arith"],
        metadata={"help": "in-domain evaluation sets (their test split)"},
    )
    out_of_domain: list[str] = field(
        default_factory=list,
        metadata={"help": "out-of-domain evaluation sets; empty: the suite's general tasks"},
    )
    eval_size: int = field(default=25, metadata={"help": "prompts per in-domain evaluation set"})
    ood_eval_size: int | None = field(
        default=None, metadata={"help": "prompts per out-of-domain set (null: eval_size)"}
    )
    eval_every: int = field(
        default=0,
        metadata={
            "help": "optimizer steps between evaluations (0: log-spaced, at 0, 2, 4, 8, ... and the end)"
        },
    )
    max_new_tokens: int = field(
        default=40, metadata={"help": "decoding budget per evaluation answer (greedy)"}
    )
    methods: list[dict[str, Any]] = field(
        default_factory=lambda: [dict(m) for m in DEMO_METHODS],
        metadata={
            "help": "list of {name, loss_type, ...PSFTConfig fields, optional sweep: its own grid}; default: "
            "the demo's four"
        },
    )
    sweep: dict[str, list[Any]] = field(
        default_factory=dict, metadata={"help": "field -> list of values, applied to every method"}
    )
    seeds: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "every method x sweep point runs once per seed"}
    )
    training: dict[str, Any] = field(
        default_factory=lambda: dict(DEMO_TRAINING),
        metadata={"help": "PSFTConfig fields shared by every run; default: the demo's (192 steps of 32)"},
    )
    reference_method: str | None = field(
        default=None,
        metadata={
            "help": "the method others are compared with (frontier gaps, matched NLL); null: sft, else the first"
        },
    )
    output_dir: str = field(
        default="runs/compare", metadata={"help": "where runs, report.json, report.md and plots go"}
    )
    checkpoint_every: int = field(
        default=0,
        metadata={
            "help": "optimizer steps between checkpoints of each run (the last one kept, deleted when the run "
            "ends): a run interrupted midway resumes from its last checkpoint; 0: none, it starts over"
        },
    )
    save_models: bool = field(
        default=False, metadata={"help": "keep each run's final model in its directory (--rl sets it)"}
    )
    dtype: str = field(
        default="float32",
        metadata={"help": "weights' dtype for training and evaluation (psft train's default too)"},
    )
    checker: str | None = field(
        default=None,
        metadata={"help": "checker for evaluation records without one (null: math or exact by the data)"},
    )

    @classmethod
    def from_yaml(cls, path: str) -> CompareConfig:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"{path}: {err}") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a YAML mapping")
        if "seed" in raw:
            raise UserError(f"{path}: `seed` is now `seeds`, a list (e.g. seeds: [0, 1, 2])")
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
        from psft.data.models import BUILTIN_MODEL_NAME

        if fields_.get("model", BUILTIN_MODEL_NAME) != BUILTIN_MODEL_NAME:
            fields_ = {**copy.deepcopy(INSTRUCT_DEFAULTS), **fields_}
        return cls(**fields_)

    def method_names(self) -> list[str]:
        """The methods' names (a method without `name` is named by its loss_type)."""
        return [m.get("name", m.get("loss_type")) for m in self.methods if isinstance(m, dict)]

    def reference(self) -> str | None:
        """The method the report compares the others with: `reference_method`, else the method named `sft`, else
        the first (None without methods). `validate_plan` refuses a `reference_method` that names no method."""
        names = self.method_names()
        if self.reference_method is not None:
            return self.reference_method
        return "sft" if "sft" in names else (names[0] if names else None)

    def runs(self) -> list[dict[str, Any]]:
        """Every run: methods (each with a unique `name`) x sweep points x seeds, seeds outermost so that a
        partial sweep covers every setting once before repeating any. Each run is a dict with `id` (its
        directory), `name` (method and sweep point: the setting seeds are grouped by), `method`, `point`
        (the sweep values), `seed` and `overrides` (the PSFTConfig fields it sets)."""
        if not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            raise UserError(f"seeds must be a non-empty list of integers, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"seeds must be distinct, got {self.seeds}")
        if "seed" in self.sweep or "seed" in self.training:
            raise UserError("set seeds with `seeds: [...]` (or --seeds), not in sweep or training")
        methods = []
        for i, method in enumerate(self.methods):
            if not isinstance(method, dict) or "loss_type" not in method:
                raise UserError(f"methods[{i}]: each method is a mapping with at least a loss_type")
            if "seed" in method or "seed" in method.get("sweep", {}):
                raise UserError(f"methods[{i}]: set seeds with `seeds: [...]`, not per method")
            methods.append({"name": method.get("name", method["loss_type"]), **method})
        settings = []
        for method in methods:
            sweep = method.get("sweep", self.sweep)  # a method's own grid replaces the shared one
            keys = list(sweep)
            for values in itertools.product(*(sweep[k] for k in keys)):
                point = dict(zip(keys, values, strict=True))
                suffix = ",".join(f"{k}={v}" for k, v in point.items())
                name = f"{method['name']}[{suffix}]" if point else method["name"]
                overrides = {k: v for k, v in {**method, **point}.items() if k not in ("name", "sweep")}
                settings.append(
                    {"name": name, "method": method["name"], "point": point, "overrides": overrides}
                )
        names = [s["name"] for s in settings]
        if len(set(names)) != len(names):
            raise UserError(f"method names must be unique, got {names}")
        return [
            {"id": f"{_safe(s['name'])}-seed{seed}", **s, "seed": seed}
            for seed in self.seeds
            for s in settings
        ]


def quick(config: CompareConfig) -> CompareConfig:
    """A smoke run of `config` for tests and a first look: two methods (each at the first point of its own grid,
    if it has one), one seed, 12 steps, few prompts. Too short to learn the in-domain task; it checks the pipeline
    end to end, it is not a result."""
    config.eval_size = min(config.eval_size, 8)
    config.ood_eval_size = min(config.ood_eval_size or config.eval_size, 8)
    config.max_new_tokens = min(config.max_new_tokens, 32)
    config.training = {**config.training, "num_train_epochs": 1, "max_steps": 12}
    config.methods = [_first_point(m) for m in config.methods[:2]]
    config.sweep = {}
    config.seeds = config.seeds[:1]
    config.eval_every = 12  # at the start and the end
    return config


def _first_point(method: Any) -> Any:
    """A method with its own sweep cut to the sweep's first values, so that its one run keeps the name it has in
    the full plan (anything else: as it is)."""
    if not isinstance(method, dict) or not isinstance(method.get("sweep"), dict):
        return method
    return {**method, "sweep": {k: v[:1] if isinstance(v, list) else v for k, v in method["sweep"].items()}}


def eval_schedule(config: CompareConfig, steps: int) -> list[int]:
    """The optimizer steps a run of `steps` steps is evaluated at: every `eval_every`, or log-spaced (0, 2, 4,
    8, ... and the end) by default, so that forgetting in the first steps is seen."""
    from psft.eval.callback import log_steps

    if config.eval_every:
        return sorted({*range(0, steps, config.eval_every), steps})
    return log_steps(steps)


def training_arguments(config: CompareConfig, run: dict[str, Any], out_dir: Path) -> Any:
    """The `PSFTConfig` of one run: compare's defaults (no bf16, no checkpoints, quiet), the shared `training`
    settings, the method's overrides and the run's seed. A bad field or value is a `UserError` naming the run."""
    from psft.core.config import PSFTConfig

    settings = {
        "bf16": False,
        "activation_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 5,
        "disable_tqdm": True,
        **config.training,
        **run["overrides"],
        # the seed sets the data order (the sampler) and any random initialisation
        "seed": run["seed"],
        "output_dir": str(out_dir),
    }
    if config.checkpoint_every:  # the last one only: what an interrupted run resumes from
        settings.update(save_strategy="steps", save_steps=config.checkpoint_every, save_total_limit=1)
    known = {f.name for f in fields(PSFTConfig) if f.init}
    for key in settings:
        if key not in known:
            shared = key in config.training and key not in run["overrides"]
            where = "training" if shared else f"method {run['name']!r}"
            raise UserError(f"{where}: unknown PSFTConfig field {key!r}{did_you_mean(key, known)}")
    try:
        return PSFTConfig(**settings)
    except (TypeError, ValueError) as err:  # a value the config refuses (UserError included)
        raise UserError(f"method {run['name']!r}: {first_line(err)}") from None


def validate_plan(config: CompareConfig, quiet: bool = False) -> list[dict[str, Any]]:
    """Check the whole plan before the first run trains (a mistake in the last method must not surface hours
    into a sweep): the runs (`CompareConfig.runs`), `train_size`, `reference_method`, and every setting's
    `PSFTConfig` (field names, loss_type, values). Each setting's config warnings are printed once, with its name (unless `quiet`).
    Returns the runs."""
    from psft.core.guards import check_honoured_options

    plan = config.runs()
    size = config.train_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise UserError(
            f"train_size must be a positive integer (the first N training records) or null, got {size!r}"
        )
    every = config.checkpoint_every
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise UserError(f"checkpoint_every must be a number of optimizer steps >= 0, got {every!r}")
    methods = config.method_names()
    if config.reference_method is not None and config.reference_method not in methods:
        raise UserError(
            f"reference_method {config.reference_method!r} is not one of the methods ({', '.join(methods)})"
            + did_you_mean(config.reference_method, methods)
        )
    checked = set()
    for run in plan:
        if run["name"] in checked:  # the seeds of one setting differ only by their seed
            continue
        checked.add(run["name"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = training_arguments(config, run, Path(config.output_dir) / run["id"])
        try:  # what PSFTTrainer refuses (label smoothing, Liger, ...): refused here, before any run trains
            check_honoured_options(args)
        except UserError as err:
            raise UserError(f"method {run['name']!r}: {err}") from None
        if config.checkpoint_every and args.rollout_epochs > 1:
            raise UserError(
                f"method {run['name']!r}: a run with rollout_epochs > 1 cannot resume from a checkpoint; set "
                "checkpoint_every: 0 or rollout_epochs: 1"
            )
        messages = [str(w.message) for w in caught if w.category is UserWarning and not quiet]
        for message in dict.fromkeys(messages):
            console.print(f"[yellow]warning[/yellow] {escape(run['name'])}: {escape(message)}")
    return plan


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


def full_preset() -> CompareConfig:
    """The research preset: every registered baseline over its own learning-rate grid, five seeds, 220
    in-domain prompts and 100 per out-of-domain task, log-spaced evaluations."""
    return CompareConfig(
        methods=[copy.deepcopy(m) for m in FULL_METHODS],
        seeds=list(FULL_SEEDS),
        eval_size=FULL_EVAL_SIZE,
        ood_eval_size=FULL_OOD_EVAL_SIZE,
        output_dir="runs/demo-full",
    )
