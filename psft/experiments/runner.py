"""Running a compare plan: each run trained with periodic evaluation (here or in worker processes), its record
written the moment it ends, the report rebuilt as runs finish."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from psft.core.threads import choose_threads, configure_threads
from psft.errors import UserError
from psft.experiments.plan import CompareConfig, eval_schedule, training_arguments, validate_plan
from psft.experiments.report import write_report
from psft.experiments.store import (
    RESULT,
    _finished,
    _write_json,
    changed_settings,
    run_settings,
    write_prompts,
)
from psft.experiments.tables import pct

console = Console(stderr=True, soft_wrap=True)


def _eval_records(config: CompareConfig) -> tuple[list[dict], list[dict]]:
    """(in-domain records, out-of-domain records) from the test splits; drift is measured on the latter."""
    from psft.data.sft import BUILTIN_PREFIX, BUILTIN_TEST_SIZE, is_builtin, load_sft_dataset
    from psft.tasks import GENERAL_TASKS, generate, to_record

    out_of_domain = config.out_of_domain or [f"psft/{task}" for task in GENERAL_TASKS]

    def rows(names: list[str], group: str, size: int) -> list[dict]:
        out = []
        for name in names:
            if is_builtin(name) and name != "psft/general" and size > BUILTIN_TEST_SIZE:
                # generated tasks: as many distinct held-out problems as asked (the first 100 are the test split)
                selected = [to_record(ex) for ex in generate(name[len(BUILTIN_PREFIX) :], size, split="test")]
            else:
                dataset = load_sft_dataset(name, split="test")
                selected = list(dataset.select(range(min(size, len(dataset)))))
            for row in selected:
                out.append({**row, "task": row.get("task") or name, "group": group})
        return out

    ood_size = config.eval_size if config.ood_eval_size is None else config.ood_eval_size
    return rows(config.in_domain, "in_domain", config.eval_size), rows(
        out_of_domain, "out_of_domain", ood_size
    )


def _group_accuracy(logs: dict[str, float], tasks: list[str]) -> float | None:
    values = [logs[f"gen/{t}/avg@1"] for t in tasks if f"gen/{t}/avg@1" in logs]
    return sum(values) / len(values) if values else None


def progress_callback(
    label: str, trainer: Any, settings: dict[str, Any] | None = None, save_on_stop: bool = False
):
    """A TrainerCallback printing one line per tenth of the run: step / total, elapsed, ETA (evaluation time
    included in the rate), and keeping the run's wall and CPU time (`elapsed`). Its clock starts when it is
    built; it goes into `trainer.run_state` at every step (add it after the evaluation callback, so that an
    evaluation at a checkpoint's step is counted), so that a resumed run's times are the whole run's. The run's
    compare `settings` go into the run state too: every checkpoint says which run it belongs to
    (`resume_point`). When another run of `--jobs` failed it stops training at the step's end (`stopped`),
    with a checkpoint if `save_on_stop`. Built here so that importing this module (for `--help`) does not import
    transformers."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self):
            self.start, self.cpu_start = time.time(), time.process_time()
            self.before = (0.0, 0.0)  # wall and CPU seconds of the run before it was resumed
            self.last = 0
            self.stopped = False

        def elapsed(self) -> tuple[float, float]:
            """The run's wall and CPU seconds so far, earlier pieces of a resumed run included."""
            return (
                self.before[0] + time.time() - self.start,
                self.before[1] + time.process_time() - self.cpu_start,
            )

        def on_train_begin(self, args, state, control, **kwargs):
            saved = trainer.run_state.callbacks.get(CLOCK)
            if settings is not None:
                trainer.run_state.callbacks[SETTINGS] = settings
            self.last = state.global_step
            if saved is not None:
                self.before = (saved["wall"], saved["cpu"])
                console.print(f"  {label}: resumed at step {state.global_step}/{max(state.max_steps, 1)}")

        def on_step_end(self, args, state, control, **kwargs):
            wall, cpu = self.elapsed()
            trainer.run_state.callbacks[CLOCK] = {"wall": wall, "cpu": cpu}
            # another run of `--jobs` failed: stop here (with a checkpoint, when the run can resume from it)
            if _stop_requested():
                self.stopped = True
                control.should_save = save_on_stop
                control.should_training_stop = True
                return
            step, total = state.global_step, max(state.max_steps, 1)
            if step - self.last < max(1, total // 10) and step != total:
                return
            self.last = step
            console.print(
                f"  {label}: step {step}/{total} ({100 * step / total:.0f}%), {_duration(wall)} elapsed, "
                f"ETA {_duration(wall / step * (total - step))}"
            )

    return Progress()


CLOCK = "compare_clock"  # the progress callback's entries in `RunState.callbacks`: the clock,
SETTINGS = "compare_settings"  # and the run's settings (`run_settings`)
LEGACY_SETTINGS = "settings.json"  # where checkpoints of psft before `SETTINGS` kept them: beside, not inside


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_method(
    config: CompareConfig, run: dict[str, Any], records: tuple, out_dir: Path, label: str = ""
) -> dict[str, Any]:
    """Train one run (a method at one sweep point and seed) with periodic evaluation; return its record."""
    from datasets.utils.logging import disable_progress_bar
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging

    from psft.core.trainer import PSFTTrainer
    from psft.data.models import load_model, load_tokenizer
    from psft.data.sft import load_sft_dataset
    from psft.eval.callback import EvalCallback
    from psft.eval.checkers import infer_checker
    from psft.eval.records import load_records, render_text

    disable_progress_bar()  # per-run bars (tokenizing, loading weights) drown the progress lines
    hf_logging.disable_progress_bar()
    in_domain, general = records
    args = training_arguments(config, run, out_dir)
    checkpoint = resume_point(config, run, out_dir)
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, config.dtype)
    train = training_set(config, load_sft_dataset(config.train_data))
    trainer = PSFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # raw log dicts every few steps; Progress says what matters
    steps = trainer.args.max_steps if trainer.args.max_steps > 0 else _planned_steps(trainer)
    evaluator = EvalCallback(
        tokenizer,
        eval_steps=eval_schedule(config, steps),
        data=in_domain + general,
        heldout=in_domain,  # held-out in-domain demonstrations: the fit the matched comparisons match on
        drift_texts=[render_text(tokenizer, row) for row in general],
        # one big batch: on a CPU a decoding step costs about the same for 1 or 256 prompts of a tiny model
        generation_kwargs={
            "max_new_tokens": config.max_new_tokens,
            "batch_size": 256,
            "checker": config.checker or infer_checker(load_records(in_domain + general)),
        },
    ).attach(trainer)
    progress = progress_callback(
        label or run["id"], trainer, run_settings(config, run), bool(config.checkpoint_every)
    )
    trainer.add_callback(progress)  # after the evaluator: see progress_callback
    trainer.train(resume_from_checkpoint=checkpoint)
    if progress.stopped:
        resume = "; it resumes from its checkpoint" if config.checkpoint_every else ""
        raise StoppedRun(
            f"{label or run['id']}: stopped at step {trainer.state.global_step} (another run failed){resume}"
        )
    runtime, cpu = progress.elapsed()
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
                    "heldout_nll": entry.get("heldout/nll"),
                    "tasks": {t: entry.get(f"gen/{t}/avg@1") for t in in_tasks + out_tasks},
                }
            )
    groups = {r["task"]: r["group"] for r in in_domain + general}
    write_prompts(
        [{**e, "group": [groups.get(t) for t in e.get("task", [])]} for e in evaluator.prompt_results],
        out_dir,
    )
    return {
        **{k: run[k] for k in ("id", "name", "method", "point", "seed", "overrides")},
        "settings": run_settings(config, run),
        "curves": curves,
        "evals": evals,
        "steps": trainer.state.global_step,
        "train_s": round(runtime - evaluator.seconds, 1),  # training alone
        "eval_s": round(evaluator.seconds, 1),  # periodic evaluation (generation, held-out NLL and drift)
        "train_cpu_s": round(cpu - evaluator.cpu_seconds, 1),  # the same in CPU time (a busy machine inflates
        "eval_cpu_s": round(evaluator.cpu_seconds, 1),  # wall time, not CPU time)
    }


def resume_point(config: CompareConfig, run: dict[str, Any], out_dir: Path) -> str | None:
    """The checkpoint an interrupted run resumes from (its last complete one), or None to start it afresh.
    Only with `checkpoint_every`; a checkpoint made with other settings, or one that does not say which
    settings made it, is refused in one line."""
    from psft.core.checkpoint import last_complete_checkpoint
    from psft.core.run_state import saved_callback_state

    if not config.checkpoint_every:
        return None
    checkpoint = last_complete_checkpoint(str(out_dir)) if out_dir.is_dir() else None
    if checkpoint is None:
        return None
    saved = saved_callback_state(checkpoint, SETTINGS)
    legacy = out_dir / LEGACY_SETTINGS
    if saved is None and legacy.is_file():
        saved = json.loads(legacy.read_text())
    if saved is None:
        raise UserError(
            f"{checkpoint}: an unfinished run whose settings are not recorded (neither in its run state nor in "
            f"{LEGACY_SETTINGS} beside it); delete that run directory to rerun it"
        )
    settings = run_settings(config, run)
    if saved != settings:
        raise UserError(
            f"{checkpoint}: an unfinished run made with other settings "
            f"({', '.join(changed_settings(settings, saved)) or 'unknown'}); delete that run directory to rerun it"
        )
    return checkpoint


def _discard_checkpoints(config: CompareConfig, out_dir: Path) -> None:
    """A finished run's checkpoints and their settings (its record is `result.json`): gigabytes for a real model."""
    from psft.core.checkpoint import checkpoints, remove_staging

    found = checkpoints(str(out_dir))
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    remove_staging(str(out_dir))  # a save cut short earlier
    (out_dir / LEGACY_SETTINGS).unlink(missing_ok=True)
    if found and not config.save_models:  # TRL's model card, written with each checkpoint, of no model kept
        (out_dir / "README.md").unlink(missing_ok=True)


def training_set(config: CompareConfig, train: Any) -> Any:
    """The records a run trains on: the first `train_size` of `train_data` (all without it). The first, not a
    sample: every run and seed trains on the same records, the seed changes only their order."""
    if config.train_size is None:
        return train
    if config.train_size > len(train):
        raise UserError(
            f"train_size {config.train_size} is more than the {len(train)} records of train_data "
            f"{config.train_data}"
        )
    return train.select(range(config.train_size))


def _planned_steps(trainer) -> int:
    dataloader = trainer.get_train_dataloader()
    accumulation = trainer.args.gradient_accumulation_steps
    per_epoch = max(1, -(-len(dataloader) // accumulation)) * trainer.args.rollout_epochs
    return int(per_epoch * trainer.args.num_train_epochs)


def _execute(config: CompareConfig, run: dict[str, Any], label: str, threads: int | None) -> dict[str, Any]:
    """Train one run and write its `result.json` at once (in the worker, so a later crash loses nothing)."""
    if _stop_requested():  # queued before another run failed, and not cancelled in time
        raise StoppedRun(f"{label}: not started (another run failed)")
    if threads:  # one worker of `--jobs`: its share of the CPUs, chosen and announced by the parent
        configure_threads(threads, announce=False)
    out_dir = Path(config.output_dir) / run["id"]
    result = run_method(config, run, _eval_records(config), out_dir, label)
    _write_json(out_dir / RESULT, result)
    _discard_checkpoints(config, out_dir)
    return result


def compare(config: CompareConfig, jobs: int = 1) -> dict[str, Any]:
    """Run every planned run not already finished in `config.output_dir` (each writes its `result.json` when it
    ends), `jobs` at a time, then write the report, the table and the plots. Returns the report."""
    from psft.core.lock import acquire_lock, release_lock

    plan = validate_plan(config)  # before anything is written or trained
    out = Path(config.output_dir)
    lock = acquire_lock(str(out))  # a second compare into the same directory is refused at once
    try:
        return _compare(config, plan, out, jobs)
    finally:
        release_lock(lock)


def _compare(config: CompareConfig, plan: list[dict[str, Any]], out: Path, jobs: int) -> dict[str, Any]:
    done = {run["id"] for run in plan if _finished(out, config, run) is not None}  # refuses changed settings
    todo = [(index, run) for index, run in enumerate(plan, start=1) if run["id"] not in done]
    for _, run in todo:  # and unfinished runs' checkpoints made with other settings, before any run starts
        resume_point(config, run, out / run["id"])
    _write_json(out / "config.json", asdict(config))  # only then: `--report` reads the plan from it
    settings = len({r["name"] for r in plan})
    console.print(
        f"[bold]psft compare[/bold]: {len(plan)} runs ({settings} settings x {len(config.seeds)} seed(s)) into "
        f"{out}" + (f"; {len(done)} already finished there, reused" if done else "")
    )
    jobs = max(1, min(jobs, len(todo) or 1))
    threads = None
    if jobs > 1:
        threads, reason = choose_threads(None, jobs)
        console.print(f"running {jobs} runs side by side, {threads} torch thread(s) each ({reason})")
    elif todo:
        configure_threads()
    start, finished = time.time(), 0
    for result in _execute_all(config, todo, len(plan), jobs, threads):
        finished += 1
        final = result["evals"][-1] if result["evals"] else {}
        left = len(todo) - finished
        eta = (time.time() - start) / finished * left  # wall time per finished run already counts the jobs
        console.print(
            f"[bold]finished[/bold] {result['id']} ({finished}/{len(todo)}): training {result['train_s']}s, "
            f"evaluation {result['eval_s']}s; in-domain {pct(final.get('in_domain'))}, out-of-domain "
            f"{pct(final.get('out_of_domain'))}" + (f"; {left} to go, ETA {_duration(eta)}" if left else "")
        )
        # what is there so far, in case the rest never finishes (fewer bootstrap replicates: it is redone at the end)
        write_report(out, plots=False, table=False, reps=200)
    report = write_report(out)
    console.print(
        f"[bold]done[/bold]: {report['finished']}/{report['planned']} runs in {_duration(time.time() - start)}; "
        f"report {out / 'report.md'} (and report.json), plots {out}/*.png, runs {out}/<run>/result.json"
    )
    return report


def _execute_all(config: CompareConfig, todo: list, total: int, jobs: int, threads: int | None):
    """Yield each run's record as it finishes: in this process, or `jobs` worker processes side by side."""
    labels = {run["id"]: f"run {index}/{total} {run['id']}" for index, run in todo}
    if jobs == 1:
        for _, run in todo:
            console.print(f"[bold]{labels[run['id']]}[/bold]: {escape(str(run['overrides']))}")
            yield _execute(config, run, labels[run["id"]], threads)
        return
    # spawn, not fork: the parent may hold torch/OpenMP thread pools that a forked child must not inherit
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_set_stop_event, initargs=(stop,)) as pool:
        futures = [pool.submit(_execute, config, run, labels[run["id"]], threads) for _, run in todo]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            # one run failed (or Ctrl-C): no queued run starts, and the runs in flight stop at their next step
            # rather than running on for an hour after the error was printed
            stop.set()
            console.print("stopping the runs in flight at their next step")
            pool.shutdown(wait=True, cancel_futures=True)
            raise


_stop_event: Any = None  # in a `--jobs` worker: set by the parent when another run failed


def _set_stop_event(event: Any) -> None:
    global _stop_event
    _stop_event = event


def _stop_requested() -> bool:
    return _stop_event is not None and _stop_event.is_set()


class StoppedRun(RuntimeError):
    """A `--jobs` run stopped because another run failed: not finished, so no record is written."""
