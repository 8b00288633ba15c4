"""The SmolLM2 study of issue 26 (examples/smollm2-study.yaml): `train_size`, settings of earlier runs unchanged,
the report's per-set accuracy table, and the study's YAML itself (parsed and validated, no model needed)."""

from pathlib import Path

import pytest

from psft.errors import UserError
from psft.experiments.analysis import summarize
from psft.experiments.plan import CompareConfig, eval_schedule, full_preset, validate_plan
from psft.experiments.presets import FULL_METHODS, FULL_SEEDS
from psft.experiments.report import render_markdown
from psft.experiments.runner import training_set
from psft.experiments.store import EVAL_FORMAT, run_settings
from psft.experiments.tables import cost_table

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "examples" / "smollm2-study.yaml"


def test_train_size_is_validated_and_keeps_the_first_records():
    from datasets import Dataset

    for bad in (0, -3, 2.5, "100", True):
        with pytest.raises(UserError, match="train_size must be a positive integer"):
            validate_plan(CompareConfig(train_size=bad), quiet=True)
    data = Dataset.from_list([{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)])
    assert training_set(CompareConfig(), data) is data
    assert training_set(CompareConfig(train_size=3), data)["prompt"] == ["q0", "q1", "q2"]
    with pytest.raises(UserError, match="train_size 11 is more than the 10 records of train_data psft/arith"):
        training_set(CompareConfig(train_size=11), data)


def _settings_before_train_size(config: CompareConfig, run: dict) -> dict:
    """`run_settings` as it was before `train_size` existed: a run made then is reused only if this is unchanged."""
    from psft.tasks.base import TASKS_VERSION

    keys = ("model", "train_data", "in_domain", "out_of_domain", "eval_size", "ood_eval_size", "eval_every")
    return {**{k: getattr(config, k) for k in keys}, "max_new_tokens": config.max_new_tokens,
            "training": config.training, "overrides": run["overrides"], "seed": run["seed"],
            "schedule": EVAL_FORMAT, "tasks": TASKS_VERSION}  # fmt: skip


def test_settings_of_runs_without_train_size_are_unchanged():
    """The research preset running now (`psft demo --full`) must resume onto its finished runs: every one of its
    runs, and the other shipped configs' runs, have exactly the settings dict they had before `train_size`."""
    configs = [full_preset(), CompareConfig(), CompareConfig.for_model(model="some/instruct-model"),
               CompareConfig.from_yaml(str(ROOT / "examples" / "compare.yaml"))]  # fmt: skip
    for config in configs:
        for run in config.runs():
            assert run_settings(config, run) == _settings_before_train_size(config, run)
    config = full_preset()
    grid = sum(len(m["sweep"]["learning_rate"]) for m in FULL_METHODS) * len(FULL_SEEDS)
    assert len(config.runs()) == grid == 135 and "train_size" not in run_settings(config, config.runs()[0])
    config.train_size = 100
    run = config.runs()[0]
    assert run_settings(config, run) == {**_settings_before_train_size(config, run), "train_size": 100}


SETS = {"word_math": "in_domain", "trivia": "out_of_domain", "instruct": "out_of_domain"}


def _study_run(name: str, seed: int, final: dict[str, list[int]]) -> tuple[dict, list[dict]]:
    """A synthetic run (4 prompts per set) and its prompts.jsonl entries: the base at step 0, `final` at 10."""
    base = {"word_math": [0, 0, 0, 0], "trivia": [1, 1, 1, 1], "instruct": [1, 1, 0, 0]}
    entries, evals = [], []
    for step, correct in ((0, base), (10, final)):
        tasks = [t for t in SETS for _ in range(4)]
        flat = [float(c) for t in SETS for c in correct[t]]
        entries.append({"step": step, "id": [f"{t}:{i % 4}" for i, t in enumerate(tasks)], "task": tasks,
                        "group": [SETS[t] for t in tasks], "correct": flat})  # fmt: skip
        acc = {t: sum(correct[t]) / 4 for t in SETS}
        evals.append({"step": step, "in_domain": acc["word_math"], "tasks": acc,
                      "out_of_domain": (acc["trivia"] + acc["instruct"]) / 2})  # fmt: skip
    run = {"id": f"{name}-seed{seed}", "name": name, "method": name, "point": {}, "seed": seed,
           "overrides": {"loss_type": name}, "curves": [], "evals": evals}  # fmt: skip
    return run, entries


def test_report_shows_each_evaluation_set_apart_with_the_base():
    finals = {
        "sft": {"word_math": [1, 1, 1, 1], "trivia": [1, 1, 0, 0], "instruct": [0, 0, 0, 0]},
        "m": {"word_math": [1, 1, 1, 0], "trivia": [1, 1, 1, 0], "instruct": [1, 0, 0, 0]},
    }
    runs, prompts = [], {}
    for seed in (0, 1):
        for name, final in finals.items():
            run, entries = _study_run(name, seed, final)
            runs.append(run)
            prompts[run["id"]] = entries
    for given in (prompts, None):  # per-prompt results: bootstrap over seeds and prompts; without: over seeds
        per_task = summarize(runs, "sft", given, reps=200)["per_task"]
        assert per_task["tasks"] == (SETS if given else dict.fromkeys(SETS))
        sft, m = per_task["settings"]["sft"], per_task["settings"]["m"]
        assert (sft["trivia"]["mean"], sft["instruct"]["mean"], m["instruct"]["mean"]) == (0.5, 0.0, 0.25)
        assert m["word_math"]["mean"] == 0.75 and sft["word_math"]["n"] == 2
        assert per_task["base"]["trivia"]["mean"] == 1.0 and per_task["base"]["instruct"]["mean"] == 0.5
    summary = summarize(runs, "sft", prompts, reps=200)
    assert summary["per_task"]["settings"]["m"]["trivia"]["ci95"] is not None  # prompts vary: an interval
    report = {"config": {"seeds": [0, 1], "model": "x", "train_data": "y", "training": {}}, "finished": 4,
              "planned": 4, "missing": [], "runs": runs, "summary": summary}  # fmt: skip
    text = render_markdown(report, [])
    assert "## Final accuracy per evaluation set" in text
    header = next(line for line in text.splitlines() if line.startswith("| setting | seeds | word_math"))
    assert header == (
        "| setting | seeds | word_math (in-domain) % | trivia (out-of-domain) % | instruct (out-of-domain) % |"
    )
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert rows["base (step 0)"].startswith("| base (step 0) | - | 0.0 | 100.0 | 50.0")
    assert "| m | 2 | 75.0 " in text
    assert "## Cost" in text and "| all | 4 | | | | | - | - |" in text  # these runs record no times


def test_cost_table_gives_median_and_range_per_method_and_the_summed_hours():
    runs = [
        {"method": "sft", "train_s": 3000, "eval_s": 600, "train_cpu_s": 2400, "eval_cpu_s": 480},
        {"method": "sft", "train_s": 4200, "eval_s": 900, "train_cpu_s": 2724, "eval_cpu_s": 570},
        {"method": "sft", "train_s": 3600, "eval_s": 780, "train_cpu_s": 2580, "eval_cpu_s": 516},
        {"method": "psft", "train_s": 4500, "eval_s": 660},  # an older record: no CPU times
    ]
    header, rule, sft, psft, total = cost_table(runs)
    assert header.startswith("| method | runs | training, wall | training, CPU |") and rule.startswith(
        "|---|"
    )
    # minutes: training wall 50/70/60 -> median 60 (50-70); CPU 40/45.4/43; evaluation wall 10/15/13, CPU
    # 8/9.5/8.6 (all under 10 minutes: tenths); whole run wall 60/85/73, CPU 48/54.9/51.6
    assert (
        sft == "| sft | 3 | 60 (50-70) | 43 (40-45) | 13 (10-15) | 8.6 (8.0-9.5) | 73 (60-85) | 52 (48-55) |"
    )
    assert psft == "| psft | 1 | 75 | - | 11 | - | 86 | - |"  # one run: its value, no range
    # hours summed over the runs: wall (3600 + 5100 + 4380 + 5160) s = 5.07 h; CPU unknown for one run
    assert total == "| all | 4 | | | | | 5.1 h | - |"


def test_study_config_parses_and_validates():
    config = CompareConfig.from_yaml(str(STUDY))
    runs = validate_plan(config, quiet=True)
    assert config.model == "models/smollm2" and config.train_data == "psft/word_math"
    assert 100 <= config.train_size <= 500  # a few hundred demonstrations
    epochs, batch = config.training["num_train_epochs"], config.training["per_device_train_batch_size"]
    assert epochs >= 10 and "max_steps" not in config.training
    steps_per_epoch = -(-config.train_size // batch)
    assert config.training["logging_steps"] <= steps_per_epoch  # entropy logged at least once an epoch
    grids = {}
    for run in runs:
        grids.setdefault(run["overrides"]["loss_type"], set()).add(run["overrides"]["learning_rate"])
    assert set(grids) == {"sft", "psft", "sft_kl"} and all(len(g) >= 3 for g in grids.values())
    assert (
        next(r for r in runs if r["overrides"]["loss_type"] == "psft")["overrides"][
            "mini_batches_per_rollout"
        ]
        == 8
    )
    assert config.seeds == [0, 1, 2] and len(runs) == 27
    assert [r["seed"] for r in runs[:9]] == [0] * 9  # seeds outermost: a partial study is balanced
    assert config.eval_size >= 100 and config.ood_eval_size >= 100
    assert "psft/instruct" in config.out_of_domain and "psft/word_math" in config.in_domain
    schedule = eval_schedule(config, steps_per_epoch * epochs)
    assert schedule[0] == 0 and schedule[-1] == steps_per_epoch * epochs and len(schedule) >= 4
    assert "train_size" in run_settings(config, runs[0])


def test_study_training_set_is_the_first_records_of_word_math():
    from psft.data.sft import load_sft_dataset

    config = CompareConfig.from_yaml(str(STUDY))
    full = load_sft_dataset(config.train_data)
    train = training_set(config, full)
    assert len(train) == config.train_size < len(full)
    assert train[0] == full[0] and train[len(train) - 1] == full[len(train) - 1]


def test_quick_runs_each_kept_method_at_the_first_point_of_its_own_grid():
    from psft.experiments.plan import quick

    runs = quick(CompareConfig.from_yaml(str(STUDY))).runs()
    assert [(r["name"], r["overrides"]) for r in runs] == [
        ("sft[learning_rate=1e-05]", {"loss_type": "sft", "learning_rate": 1e-5}),
        (
            "psft-K8[learning_rate=1e-05]",
            {"loss_type": "psft", "mini_batches_per_rollout": 8, "learning_rate": 1e-5},
        ),
    ]
