"""lm-evaluation-harness bridge: run lm-eval tasks on an in-memory model or a checkpoint.

Needs the optional extra: ``pip install 'psft[lmeval]'``. The model goes through lm-eval's own HF wrapper
(``HFLM(pretrained=model, tokenizer=tokenizer)``), so tasks score exactly as lm-eval scores them. Custom
tasks (e.g. YAML over a local data file) are found with ``include_path``; with ``HF_DATASETS_OFFLINE=1``
and ``HF_HUB_OFFLINE=1`` such tasks run without network.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from psft.errors import UserError


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise UserError("lm-eval is not installed: pip install 'psft[lmeval]'") from err
    return lm_eval, HFLM, TaskManager


def run_lm_eval(
    model,
    tasks: list[str],
    *,
    tokenizer=None,
    include_path: str | Path | None = None,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    device: str | None = None,
    apply_chat_template: bool = False,
    gen_kwargs: dict | None = None,
    log_samples: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """lm-eval's results dict for `tasks` on `model` (a `PreTrainedModel` or a checkpoint path).

    With a model object, pass its `tokenizer` (object or path) too; with a path, the tokenizer defaults to it.
    """
    lm_eval, HFLM, TaskManager = _lm_eval()
    if include_path is not None and not Path(include_path).exists():
        raise UserError(f"lm-eval include path not found: {include_path}")
    if isinstance(model, (str, Path)):
        if not Path(model).exists():
            raise UserError(f"model path not found: {model}")
        lm = HFLM(
            pretrained=str(model),
            tokenizer=tokenizer,
            batch_size=batch_size,
            device=device or ("cuda" if _cuda() else "cpu"),
        )
    else:
        if tokenizer is None:
            raise UserError("run_lm_eval: pass the tokenizer with an in-memory model")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = _task_manager(TaskManager, tasks, include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown lm-eval task {unknown[0]!r} (custom tasks: pass include_path)")
    was_training = getattr(model, "training", False)
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            apply_chat_template=apply_chat_template,
            gen_kwargs=gen_kwargs,
            log_samples=log_samples,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    finally:
        if was_training:
            model.train()
    return results


def _task_manager(TaskManager, tasks: list[str], include_path: str | Path | None):
    """Only the custom tasks when they are all that is asked for: indexing lm-eval's own ~15k tasks takes ~10 s."""
    if include_path is not None:
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in manager.all_tasks for t in tasks):
            return manager
    return TaskManager(include_path=str(include_path) if include_path else None)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def lm_eval_metrics(results: dict[str, Any], prefix: str = "lm_eval") -> dict[str, float]:
    """Flatten lm-eval results to ``{prefix}/{task}/{metric}`` (filter ``none`` dropped), numbers only."""
    out: dict[str, float] = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, _, filt = key.partition(",")
            name = metric if filt in ("", "none") else f"{metric}_{filt}"
            if not (isinstance(value, float) and math.isnan(value)):
                out[f"{prefix}/{task}/{name}"] = float(value)
    return out
