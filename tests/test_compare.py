"""`psft compare` / `psft demo`: configuration, seeds, statistics, frontier verdicts, robust runs, end to end."""

import json
import math
import re
import warnings

import pytest
import yaml

import psft.experiments.runner as compare_module
from psft.cli import main
from psft.errors import UserError
from psft.experiments import stats
from psft.experiments.analysis import summarize
from psft.experiments.estimates import estimate, frontier_at, seed_frontier, t_quantile
from psft.experiments.plan import CompareConfig
from psft.experiments.report import load_report, print_table
from psft.experiments.runner import compare
from psft.experiments.store import PLAIN_PROMPTS, read_prompts, write_prompts
from psft.experiments.tables import drift_lines, format_estimate


def test_config_from_yaml_rejects_unknown_fields_and_the_old_seed_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "psft/tiny-base", "methodz": []}))
    with pytest.raises(UserError, match="unknown field\\(s\\) methodz"):
        CompareConfig.from_yaml(str(path))
    path.write_text(yaml.safe_dump({"seed": 3}))
    with pytest.raises(UserError, match="seeds"):
        CompareConfig.from_yaml(str(path))


def test_runs_multiply_methods_sweep_and_seeds_with_seeds_outermost():
    config = CompareConfig(
        methods=[{"loss_type": "sft"}, {"name": "psft", "loss_type": "psft"}],
        sweep={"learning_rate": [1e-4, 3e-4], "mini_batches_per_rollout": [4]},
        seeds=[0, 5],
    )
    runs = config.runs()
    names = [
        "sft[learning_rate=0.0001,mini_batches_per_rollout=4]",
        "sft[learning_rate=0.0003,mini_batches_per_rollout=4]",
        "psft[learning_rate=0.0001,mini_batches_per_rollout=4]",
        "psft[learning_rate=0.0003,mini_batches_per_rollout=4]",
    ]
    assert [r["name"] for r in runs] == names * 2
    assert [r["seed"] for r in runs] == [0] * 4 + [5] * 4
    assert runs[7]["id"] == "psft_learning_rate=0.0003_mini_batches_per_rollout=4_-seed5"
    assert len({r["id"] for r in runs}) == 8
    assert runs[3]["overrides"] == {"loss_type": "psft", "learning_rate": 3e-4, "mini_batches_per_rollout": 4}
    assert runs[3]["method"] == "psft" and runs[3]["point"] == {
        "learning_rate": 3e-4,
        "mini_batches_per_rollout": 4,
    }
    with pytest.raises(UserError, match="unique"):
        CompareConfig(methods=[{"loss_type": "sft"}, {"loss_type": "sft"}]).runs()
    with pytest.raises(UserError, match="methods\\[0\\]"):
        CompareConfig(methods=[{"learning_rate": 1}]).runs()
    for bad in (
        {"sweep": {"seed": [1, 2]}},
        {"seeds": []},
        {"seeds": [1, 1]},
        {"methods": [{"loss_type": "sft", "seed": 1}]},
    ):
        with pytest.raises(UserError, match="seeds"):
            CompareConfig(**bad).runs()


def test_estimate_gives_student_t_intervals_and_none_for_one_value():
    one = estimate([0.4])
    assert one["mean"] == 0.4 and one["se"] is None and one["ci95"] is None
    est = estimate([1.0, 2.0, 3.0])
    se = 1 / math.sqrt(3)  # sample sd 1, n 3
    assert est["se"] == pytest.approx(se)
    assert est["ci95"] == pytest.approx([2 - 4.303 * se, 2 + 4.303 * se], abs=1e-3)
    assert t_quantile(1) == pytest.approx(12.706, abs=1e-3) and t_quantile(30) == pytest.approx(2.042, abs=1e-3)
    assert t_quantile(31) == pytest.approx(2.0395, abs=1e-3) and t_quantile(10_000) == pytest.approx(
        1.96, abs=1e-3
    )
    assert estimate([None, 1.0])["n"] == 1
    assert (
        format_estimate({"mean": 0.6, "ci95": [-0.1, 1.2]}, 100) == "60.0 [0.0, 100.0]"
    )  # shares stay in range
    # NLL, KL and entropy cannot be negative either (a t-interval over 2 seeds passes 0 easily); no upper cut
    assert format_estimate({"mean": 0.6, "ci95": [-0.1, 1.2]}) == "0.600 [0.000, 1.200]"
    assert format_estimate({"mean": 0.011, "ci95": [0.004, 0.018]}) == "0.011 [0.004, 0.018]"


def _run(method, seed, points, name=None, nll=0.5):
    """A synthetic run record: `points` are (in-domain, out-of-domain) at steps 0, 10, 20, ..."""
    return {
        "id": f"{name or method}-seed{seed}",
        "name": name or method,
        "method": method,
        "point": {},
        "seed": seed,
        "overrides": {"loss_type": method},
        "curves": [{"step": 10, "nll": nll, "entropy": 0.3}],
        "evals": [
            {"step": 10 * i, "in_domain": x, "out_of_domain": y, "drift_kl": 0.1 * i}
            for i, (x, y) in enumerate(points)
        ],
    }


def test_frontier_keeps_the_best_out_of_domain_at_each_in_domain_level():
    runs = [
        _run("a", 0, [(0.0, 0.9), (0.3, 0.6), (0.6, 0.2)]),
        _run("a", 0, [(0.0, 0.9), (0.4, 0.7), (0.5, 0.1)], name="a2"),
    ]
    frontier = seed_frontier(runs)
    assert frontier == [(0.0, 0.9), (0.4, 0.7), (0.6, 0.2)]  # (0.3, 0.6) and (0.5, 0.1) are dominated
    assert (
        frontier_at(frontier, 0.35) == 0.7
        and frontier_at(frontier, 0.55) == 0.2
        and frontier_at(frontier, 0.7) is None
    )


def _pair(gaps_by_seed, base=((0.0, 0.9), (0.5, 0.4), (0.8, 0.2))):
    """Reference method `sft` and method `m` whose path is `sft`'s shifted by each seed's gap."""
    runs = []
    for seed, gap in enumerate(gaps_by_seed):
        runs.append(_run("sft", seed, base))
        runs.append(_run("m", seed, [(x, y + gap) for x, y in base]))
    return runs


def _verdicts(runs):
    (gap,) = summarize(runs, "sft")["frontier_gaps"]
    return gap, {lv["verdict"] for lv in gap["levels"]}


def test_verdicts_never_claim_more_than_the_holm_adjusted_tests():
    above, words = _verdicts(_pair([0.10, 0.12, 0.11]))
    assert [lv["level"] for lv in above["levels"]][-1] == 0.8 and words == {"above"}
    assert all(lv["mean"] == pytest.approx(0.11) and lv["p_holm"] < 0.05 for lv in above["levels"])
    # Holm: the adjusted p-values are at least the raw ones, and the family is every level of the table
    assert all(lv["p_holm"] >= lv["p"] and lv["family"] == len(above["levels"]) for lv in above["levels"])
    assert _verdicts(_pair([-0.10, -0.12, -0.11]))[1] == {"below"}
    assert _verdicts(_pair([0.10, -0.08, 0.02]))[1] == {"not resolved"}  # noisy: not "equal"
    assert _verdicts(_pair([0.001, -0.001, 0.0]))[1] == {"equivalent within ±3 points"}  # TOST says so
    single, words = _verdicts(_pair([0.3]))
    assert words == {"not resolved"} and single["levels"][0]["p"] is None  # one seed: no test
    # above at low in-domain levels, below at high ones
    runs = []
    for seed, (lo, hi) in enumerate([(0.10, -0.10), (0.12, -0.09), (0.11, -0.11)]):
        runs.append(_run("sft", seed, [(0.0, 0.9), (0.5, 0.4), (0.8, 0.3)]))
        runs.append(_run("m", seed, [(0.0, 0.9), (0.5, 0.4 + lo), (0.8, 0.3 + hi)]))
    crossing, words = _verdicts(runs)
    by_level = {lv["level"]: lv["verdict"] for lv in crossing["levels"]}
    assert by_level[0.5] == "above" and by_level[0.8] == "below"


def test_matched_held_out_nll_interpolates_each_path_to_the_target():
    runs = []
    for seed in range(3):
        sft = _run("sft", seed, [(0.0, 0.9), (0.5, 0.5), (0.6, 0.3)])
        m = _run("m", seed, [(0.0, 0.9 + 0.01 * seed), (0.2, 0.8), (0.4, 0.6)])
        for run, nll in ((sft, (2.0, 1.0, 0.5)), (m, (2.0, 1.5, 1.0))):
            for e, value in zip(run["evals"], nll, strict=True):
                e["heldout_nll"] = value
        runs += [sft, m]
    summary = summarize(runs, "sft")
    (matched,) = summary["matched_nll"]
    targets = [t["target"] for t in matched["targets"]]
    # six targets strictly between the base's 2.0 and the shared floor 1.0; the three above 1.5 every run reaches
    # before its first evaluation (sft at 1.0, m at 1.5), interpolated from the same base point: left out
    assert targets == pytest.approx([2 - k / 7 for k in range(4, 7)])
    at = matched["targets"][0]  # 2 - 4/7
    # sft falls to it between steps 0 and 10 (NLL 2 -> 1, out-of-domain 0.9 -> 0.5), m between steps 10 and 20
    # (NLL 1.5 -> 1.0, out-of-domain 0.8 -> 0.6)
    sft_at = 0.9 + (4 / 7) * (0.5 - 0.9)
    m_at = 0.8 + ((4 / 7 - 0.5) / 0.5) * (0.6 - 0.8)
    assert at["out_of_domain"]["mean"] == pytest.approx(m_at - sft_at)
    last = matched["targets"][2]  # 2 - 6/7: sft between steps 0 and 10, m between steps 10 and 20
    sft_last = 0.9 + (6 / 7) * (0.5 - 0.9)
    m_last = 0.8 + ((6 / 7 - 0.5) / 0.5) * (0.6 - 0.8)
    assert last["out_of_domain"]["mean"] == pytest.approx(m_last - sft_last)
    claims = {c["kind"]: c for c in summary["claims"]}
    assert set(claims) == {"frontier", "matched_nll", "entropy_step", "entropy_nll"}
    assert (
        claims["matched_nll"]["claim"]
        == "m keeps more out-of-domain accuracy than sft at matched held-out NLL"
    )
    assert claims["matched_nll"]["holds"] in ("holds", "does not hold", "not resolved")

    # every run at its floor by its first evaluation (a study evaluating every few epochs): no target is left,
    # and the matched-NLL claims are "not resolved", not "equivalent" (which interpolating from the shared base
    # point alone would make them near the base)
    for run in runs:
        for e, value in zip(run["evals"], (2.0, 1.0, 1.2), strict=True):
            e["heldout_nll"] = value
    summary = summarize(runs, "sft")
    assert summary["matched_nll"][0]["targets"] == []
    claims = {c["kind"]: c for c in summary["claims"]}
    for kind in ("matched_nll", "entropy_nll"):
        assert claims[kind]["holds"] == "not resolved" and claims[kind]["over"].startswith("no held-out NLL target")


def test_summary_pairs_equal_settings_and_tests_entropy_at_equal_step(capsys):
    runs = []
    for seed in range(3):
        for name, lr in (("sft[lr=1]", "1"), ("sft[lr=2]", "2")):
            runs.append({**_run("sft", seed, [(0.0, 0.9), (0.5, 0.3)], name=name), "point": {"lr": lr}})
        m = {**_run("m", seed, [(0.0, 0.9), (0.5, 0.5 + 0.01 * seed)], name="m[lr=1]"), "point": {"lr": "1"}}
        m["curves"] = [
            {"step": 5, "nll": 0.5, "entropy": 0.3},
            {"step": 10, "nll": 0.5, "entropy": 0.5 + 0.01 * seed},
        ]
        runs.append(m)
    for run in runs:
        if run["method"] == "sft":
            run["curves"] = [
                {"step": 5, "nll": 0.5, "entropy": 0.3},
                {"step": 10, "nll": 0.5, "entropy": 0.3},
            ]
    summary = summarize(runs, "sft")
    assert [g["name"] for g in summary["groups"]] == ["sft[lr=1]", "sft[lr=2]", "m[lr=1]"]
    (equal,) = summary["equal_settings"]
    assert equal["reference_setting"] == "sft[lr=1]"
    assert equal["gap"]["in_domain"]["mean"] == pytest.approx(0.0)
    assert equal["gap"]["out_of_domain"]["mean"] == pytest.approx(0.21)
    assert equal["gap"]["out_of_domain"]["verdict"] == "above"
    # entropy at equal step: steps after the first both logged (10): 0.5 + 0.01 seed - 0.3
    assert equal["gap"]["entropy"]["mean"] == pytest.approx(0.21)
    claim = next(c for c in summary["claims"] if c["kind"] == "entropy_step")
    assert claim["mean"] == pytest.approx(0.21) and claim["holds"] == "holds"
    print_table({"finished": 9, "planned": 9, "summary": summary})
    out = capsys.readouterr().out
    assert "sft[lr=1]" in out  # a setting's name is not taken for rich markup
    assert "claim: m's entropy stays higher than sft's at equal step" in out


def test_drift_gap_per_setting_and_over_the_equal_rate_pairs_is_a_t_test_on_the_seeds():
    """Final drift (KL from the base) of `m` minus `sft`'s at two rates and three seeds: at lr 1 -0.30, -0.20,
    -0.25; at lr 2 -0.10, -0.10, -0.25. Per seed over both rates: -0.20, -0.15, -0.25, mean -0.20, se
    0.05 / sqrt(3), t = 6.93 on 2 df, p = 0.020, interval -0.20 +/- 4.303 se. Per setting: lr 1 p = 0.020 (x2
    by Holm: 0.040, below); lr 2 mean -0.15, se 0.05, t = 3, p = 0.095 (not resolved)."""
    gaps = {"1": (-0.30, -0.20, -0.25), "2": (-0.10, -0.10, -0.25)}
    runs = []
    for seed in range(3):
        for lr, by_seed in gaps.items():
            ref = {**_run("sft", seed, [(0.0, 0.9), (0.5, 0.3)], name=f"sft[lr={lr}]"), "point": {"lr": lr}}
            m = {**_run("m", seed, [(0.0, 0.9), (0.5, 0.3)], name=f"m[lr={lr}]"), "point": {"lr": lr}}
            ref["evals"][-1]["drift_kl"] = 1.5 + 0.1 * seed
            m["evals"][-1]["drift_kl"] = 1.5 + 0.1 * seed + by_seed[seed]
            runs += [ref, m]
    summary = summarize(runs, "sft")
    (pooled,) = summary["drift"]
    se = 0.05 / math.sqrt(3)
    assert pooled["mean"] == pytest.approx(-0.20) and pooled["se"] == pytest.approx(se)
    assert pooled["df"] == pytest.approx(2.0) and pooled["pairs"] == 2 and pooled["seeds"] == [0, 1, 2]
    assert pooled["ci95"] == pytest.approx([-0.20 - 4.3027 * se, -0.20 + 4.3027 * se], abs=1e-3)
    assert pooled["p"] == pytest.approx(stats.z_test(-0.20, se, 2)) and 0.015 < pooled["p"] < 0.025
    assert pooled["verdict"] == "below"
    by_lr = {e["setting"]: e["gap"]["drift"] for e in summary["equal_settings"]}
    assert by_lr["m[lr=1]"]["mean"] == pytest.approx(-0.25) and by_lr["m[lr=1]"]["verdict"] == "below"
    assert by_lr["m[lr=1]"]["p_holm"] == pytest.approx(2 * by_lr["m[lr=1]"]["p"])
    assert by_lr["m[lr=2]"]["mean"] == pytest.approx(-0.15) and by_lr["m[lr=2]"]["se"] == pytest.approx(0.05)
    assert by_lr["m[lr=2]"]["verdict"] == "not resolved"
    lines = drift_lines(summary)
    assert lines == [
        "- m's final drift from the base minus sft's: -0.200 [-0.324, -0.076] nats per token (mean over 2 "
        f"equal-learning-rate pair(s), 3 seed(s)); Holm-adjusted p {pooled['p_holm']:.3f}: below"
    ]


def test_a_seed_enters_a_comparison_only_with_every_setting_of_both_methods():
    """Midway through a study run in pieces, seed 1 has `m` at one rate of two: its frontier there would be a
    best over fewer runs than `sft`'s, biased against `m`. Only seed 0, complete for both, is compared."""
    runs = []
    for seed in (0, 1):
        for lr in ("1", "2"):
            runs.append({**_run("sft", seed, [(0.0, 0.9), (0.5, 0.3)], name=f"sft[lr={lr}]"), "point": {"lr": lr}})
            if seed == 0 or lr == "1":
                runs.append({**_run("m", seed, [(0.0, 0.9), (0.5, 0.4)], name=f"m[lr={lr}]"), "point": {"lr": lr}})
    summary = summarize(runs, "sft")
    (gaps,) = summary["frontier_gaps"]
    assert gaps["seeds"] == [0]
    assert next(c for c in summary["claims"] if c["kind"] == "frontier")["n"] == 1
    runs.append({**_run("m", 1, [(0.0, 0.9), (0.5, 0.4)], name="m[lr=2]"), "point": {"lr": "2"}})
    assert summarize(runs, "sft")["frontier_gaps"][0]["seeds"] == [0, 1]


def test_research_preset_grids_seeds_prompts_and_log_spaced_evaluations():
    from psft.eval.callback import log_steps
    from psft.experiments.plan import eval_schedule, full_preset

    config = full_preset()
    runs = config.runs()
    assert len(config.seeds) >= 5 and config.eval_size >= 155 and config.ood_eval_size >= 100
    grids = {}
    for run in runs:
        grids.setdefault(run["method"], set()).add(run["overrides"]["learning_rate"])
    assert set(grids) == {"sft", "psft-K8", "eaft", "dft", "asft", "sft-kl"}
    for method, grid in grids.items():
        assert len(grid) >= (5 if method in ("sft", "psft-K8") else 3), method
        ratios = {round(b / a, 1) for a, b in zip(sorted(grid), sorted(grid)[1:], strict=False)}
        assert len(ratios) <= 2 and min(ratios) >= 2, (method, ratios)  # log-spaced
    assert log_steps(192) == [0, 2, 4, 8, 16, 32, 64, 128, 192]
    assert log_steps(8) == [0, 2, 4, 8] and log_steps(1) == [0, 1]
    assert eval_schedule(config, 192) == log_steps(192)
    config.eval_every = 48
    assert eval_schedule(config, 192) == [0, 48, 96, 144, 192]


def _fake_runs(monkeypatch, fail_on=None):
    """Replace training with instant synthetic runs; record which runs were trained."""
    trained = []

    def fake(config, run, records, out_dir, label=""):
        if run["id"] == fail_on:
            raise RuntimeError("killed")
        trained.append(run["id"])
        result = _run(
            run["method"], run["seed"], [(0.0, 0.9), (0.2 + 0.1 * run["seed"], 0.5)], name=run["name"]
        )
        return {**result, "id": run["id"], "point": run["point"], "overrides": run["overrides"],
                "settings": compare_module.run_settings(config, run), "steps": 10, "train_s": 1.0, "eval_s": 0.5}  # fmt: skip

    monkeypatch.setattr(compare_module, "run_method", fake)
    monkeypatch.setattr(compare_module, "_eval_records", lambda config: ([], []))
    return trained


def test_each_run_is_saved_when_it_ends_and_a_rerun_skips_finished_ones(tmp_path, monkeypatch):
    config = CompareConfig(
        methods=[{"loss_type": "sft"}, {"name": "p", "loss_type": "psft"}],
        seeds=[0, 1],
        output_dir=str(tmp_path),
    )
    trained = _fake_runs(monkeypatch, fail_on="p-seed1")
    with pytest.raises(RuntimeError, match="killed"):
        compare(config)
    assert trained == ["sft-seed0", "p-seed0", "sft-seed1"]
    partial = json.loads((tmp_path / "report.json").read_text())  # rebuilt after every finished run
    assert (partial["finished"], partial["planned"], partial["missing"]) == (3, 4, ["p-seed1"])
    assert [r["seed"] for r in partial["runs"]] == [0, 0, 1]

    trained = _fake_runs(monkeypatch)
    report = compare(config)
    assert trained == ["p-seed1"]  # the three finished runs were reused
    assert report["finished"] == 4 and report["summary"]["groups"][0]["seeds"] == [0, 1]
    # identical runs: equivalence shown (TOST), never "equal within noise"
    assert "equivalent within ±3 points" in (tmp_path / "report.md").read_text()

    (tmp_path / "report.json").unlink()
    with warnings.catch_warnings():  # no run clips: clip_ratio.png says so, no empty-legend warning
        warnings.simplefilter("error")
        assert main(["compare", "--report", str(tmp_path)]) == 0  # re-render only
    assert json.loads((tmp_path / "report.json").read_text())["finished"] == 4
    assert (tmp_path / "frontier.png").stat().st_size > 1000

    config.training = {**config.training, "num_train_epochs": 3}  # a finished run no longer means the same
    with pytest.raises(UserError, match="other settings \\(training\\)"):
        compare(config)
    assert json.loads((tmp_path / "config.json").read_text())["training"]["num_train_epochs"] == 12  # kept
    with pytest.raises(UserError, match="no config.json"):
        load_report(tmp_path / "sft-seed0")


def test_compare_help_lists_every_config_field(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    for name in CompareConfig.__dataclass_fields__:
        assert f"\n  {name} " in text, name
    assert "prompts per in-domain evaluation set" in text


@pytest.mark.slow
def test_seeds_change_the_data_order_and_jobs_run_side_by_side(tmp_path):
    """Two seeds of one method in two worker processes: each records its seed; the data order differs (~40 s)."""
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "methods": [{"name": "sft", "loss_type": "sft", "learning_rate": 1e-4}],
                "training": {
                    "per_device_train_batch_size": 8,
                    "max_steps": 4,
                    "logging_steps": 1,
                    "max_length": 128,
                    "assistant_only_loss": True,
                },  # fmt: skip
                "eval_size": 2,
                "ood_eval_size": 1,
                "eval_every": 4,
                "max_new_tokens": 8,
            }
        )
    )
    assert (
        main(
            [
                "compare",
                "--config",
                str(path),
                "--seeds",
                "0",
                "1",
                "--jobs",
                "2",
                "--output_dir",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    runs = {r["seed"]: r for r in report["runs"]}
    assert sorted(runs) == [0, 1] and all(r["settings"]["seed"] == s for s, r in runs.items())
    assert runs[0]["curves"][0]["step"] == 1
    assert runs[0]["curves"][0]["nll"] != runs[1]["curves"][0]["nll"]  # different first batches
    assert report["summary"]["groups"][0]["seeds"] == [0, 1]


@pytest.mark.slow
def test_a_failed_run_stops_the_runs_in_flight_at_their_next_step(tmp_path, capsys):
    """`--jobs 2`: when one run fails, the other stops at its next step (with a checkpoint to resume from)
    instead of running to its end after the error was printed (~30 s)."""
    config = CompareConfig(
        methods=[
            # diverges at once: its second non-finite step in a row ends it
            {"name": "boom", "loss_type": "sft", "learning_rate": 1e30, "max_nonfinite_steps": 1},
            {"name": "long", "loss_type": "sft", "learning_rate": 1e-4, "max_steps": 2_000},
        ],
        training={"per_device_train_batch_size": 4, "max_steps": 6, "max_length": 128, "assistant_only_loss": True},
        eval_size=2,
        ood_eval_size=1,
        eval_every=100_000,
        max_new_tokens=8,
        checkpoint_every=100_000,  # the only checkpoint is the one written when the run stops
        output_dir=str(tmp_path),
    )
    with pytest.raises(UserError, match="non-finite"):
        compare(config, jobs=2)
    assert "stopping the runs in flight at their next step" in capsys.readouterr().err
    long = tmp_path / "long-seed0"
    assert not (long / "result.json").exists() and not (long / "psft.lock").exists()  # not recorded as finished
    (checkpoint,) = long.glob("checkpoint-*")  # written when it stopped, long before its 2,000 steps
    assert 0 < int(checkpoint.name.split("-")[1]) < 500
    assert not (tmp_path / "psft.lock").exists()  # the compare's own claim on the directory, released


def test_demo_quick_end_to_end_writes_a_well_formed_report_and_plots(tmp_path, capsys):
    assert main(["demo", "--quick", "--output_dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [run["name"] for run in report["runs"]] == ["sft", "psft-K8"]
    for run in report["runs"]:
        assert run["steps"] == 12 and run["seed"] == 0
        assert [e["step"] for e in run["evals"]] == [0, 12]
        base, final = run["evals"]
        # the built-in model knows the general tasks and not yet the in-domain one
        assert base["out_of_domain"] > 0.8 and base["in_domain"] < 0.3
        assert base["drift_kl"] == pytest.approx(0.0, abs=1e-6) and final["drift_kl"] > 0
        assert set(base["tasks"]) == {"arith", "reverse", "upper", "add", "length", "json", "brackets"}
        assert [c["step"] for c in run["curves"]] == [5, 10]  # no training log lost at evaluation steps
        assert all("entropy" in c and "nll" in c for c in run["curves"])
        assert run["train_s"] > 0 and run["eval_s"] > 0
    assert all("clip_ratio/high" in c for c in report["runs"][1]["curves"])
    for png in ("frontier.png", "entropy.png", "clip_ratio.png", "pareto.png", "drift.png", "forgetting.png"):
        assert (tmp_path / png).stat().st_size > 1000
    # per-prompt results of every evaluation, in each run's directory
    for run in report["runs"]:
        assert not (tmp_path / run["id"] / "prompts.jsonl").exists()  # gzipped only
        lines = read_prompts(tmp_path / run["id"])
        assert [e["step"] for e in lines] == [0, 12]
        first = lines[0]
        assert len(first["id"]) == len(first["correct"]) == 8 * 7 and first["id"][0] == "arith:0"
        assert first["heldout_id"] == [f"arith:{i}" for i in range(8)] and len(first["heldout_nll"]) == 8
        in_domain = [c for c, g in zip(first["correct"], first["group"], strict=True) if g == "in_domain"]
        assert sum(in_domain) / len(in_domain) == pytest.approx(run["evals"][0]["in_domain"])
        assert (
            run["evals"][1]["heldout_nll"] < run["evals"][0]["heldout_nll"]
        )  # the demonstrations are learned
    summary = report["summary"]
    assert summary["noise"]["prompt_level"] and summary["noise"]["in_domain_prompts"] == 8
    assert [c["kind"] for c in summary["claims"]] == [
        "frontier",
        "matched_nll",
        "entropy_step",
        "entropy_nll",
    ]
    assert all(c["holds"] == "not resolved" for c in summary["claims"])  # one seed: nothing is tested
    text = (tmp_path / "report.md").read_text()
    assert (
        "## Uncertainty" in text
        and "Holm-adjusted" in text
        and text.rstrip().splitlines()[-1].startswith("| psft-K8")
    )
    assert "## Claims" in text and "| claim | effect [95% CI] |" in text and "not resolved" in text
    captured = capsys.readouterr()
    assert "psft compare" in captured.out and "smoke run" in captured.err
    assert "step 12/12" in captured.err


def test_documented_compare_examples_exist_and_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    paths = {
        p for page in pages for p in re.findall(r"psft compare --config (examples/\S+)", page.read_text())
    }
    assert {"examples/compare.yaml", "examples/smollm2-study.yaml", "examples/gpu-study.yaml"} <= paths
    runs = {"examples/compare.yaml": 18, "examples/smollm2-study.yaml": 27, "examples/gpu-study.yaml": 27}
    for path in paths:
        assert len(CompareConfig.from_yaml(str(root / path)).runs()) == runs.get(path), path


# ------------------------------------------------------------------ the plan is checked before anything trains
def _compare_yaml(tmp_path, **fields_):
    path = tmp_path / "e.yaml"
    methods = [{"name": "sft", "loss_type": "sft"}, {"name": "psft", "loss_type": "psft"}]
    path.write_text(yaml.safe_dump({"methods": methods, **fields_}))
    return str(path)


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"psft {command}: error: "), err
    return err[0]


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize(
    ("third", "expected"),
    [
        ({"name": "bad", "loss_type": "ppo"}, "method 'bad': loss_type: unknown loss_type 'ppo'"),
        (
            {"name": "typo", "loss_type": "sft", "learning_rte": 1e-4},
            "method 'typo': unknown PSFTConfig field 'learning_rte'; did you mean 'learning_rate'?",
        ),
        (
            {"name": "eps", "loss_type": "psft", "epsilon": 2},
            "method 'eps': epsilon must be in (0, 1), got 2",
        ),
    ],
)
def test_a_bad_last_method_is_refused_before_the_first_run_trains(
    tmp_path, monkeypatch, capsys, third, expected, quick
):
    """Without --quick the third method would train last; with --quick it would be dropped: either way the
    mistake is one line before any run (nothing trained, no output directory)."""
    trained = _fake_runs(monkeypatch)
    path = tmp_path / "e.yaml"
    path.write_text(
        yaml.safe_dump(
            {"methods": [{"name": "sft", "loss_type": "sft"}, {"name": "psft", "loss_type": "psft"}, third]}
        )
    )
    out = tmp_path / "o"
    argv = ["compare", "--config", str(path), "--output_dir", str(out)] + (["--quick"] if quick else [])
    capsys.readouterr()
    assert main(argv) == 2
    assert expected in _one_line(capsys, "compare")
    assert trained == [] and not out.exists()


def test_a_typo_in_the_shared_training_settings_names_the_field(tmp_path, monkeypatch, capsys):
    trained = _fake_runs(monkeypatch)
    argv = [
        "compare",
        "--config",
        _compare_yaml(tmp_path, training={"max_stepz": 3}),
        "--output_dir",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "training: unknown PSFTConfig field 'max_stepz'; did you mean 'max_steps'?" in _one_line(
        capsys, "compare"
    )
    assert trained == []


def test_reference_method_must_name_a_method_and_defaults_to_sft_else_the_first(
    tmp_path, monkeypatch, capsys
):
    trained = _fake_runs(monkeypatch)
    argv = [
        "compare",
        "--config",
        _compare_yaml(tmp_path, reference_method="sftt"),
        "--output_dir",
        str(tmp_path),
    ]
    assert main(argv) == 2
    line = _one_line(capsys, "compare")
    assert "reference_method 'sftt' is not one of the methods (sft, psft); did you mean 'sft'?" in line
    assert trained == []
    psft_first = [{"name": "p", "loss_type": "psft"}, {"name": "sft", "loss_type": "sft"}]
    assert CompareConfig(methods=psft_first).reference() == "sft"
    assert CompareConfig(methods=psft_first, reference_method="p").reference() == "p"
    assert CompareConfig(methods=[{"loss_type": "dft"}, {"loss_type": "psft"}]).reference() == "dft"


def test_the_report_compares_with_the_reference_even_when_it_is_not_the_first_method(tmp_path, monkeypatch):
    _fake_runs(monkeypatch)
    config = CompareConfig(
        methods=[{"name": "p", "loss_type": "psft"}, {"name": "sft", "loss_type": "sft"}],
        output_dir=str(tmp_path),
    )
    report = compare(config)
    assert report["summary"]["reference"] == "sft"
    assert [g["method"] for g in report["summary"]["frontier_gaps"]] == ["p"]


def test_quick_says_what_it_leaves_out_and_honours_seeds_given_on_the_command_line(
    tmp_path, monkeypatch, capsys
):
    trained = _fake_runs(monkeypatch)
    third = {"name": "sft-low", "loss_type": "sft", "learning_rate": 1e-5}
    path = tmp_path / "e.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "methods": [
                    {"name": "sft", "loss_type": "sft"},
                    {"name": "psft", "loss_type": "psft"},
                    third,
                ],
                "seeds": [0, 1, 2],
                "reference_method": "sft-low",
            }
        )
    )
    assert main(["compare", "--config", str(path), "--quick", "--output_dir", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert trained == ["sft-seed0", "psft-seed0"]
    assert "--quick runs 2 of the 3 settings; left out: sft-low" in err
    assert "--quick runs seed(s) 0 of 0, 1, 2; left out: 1, 2" in err
    assert "--quick leaves out reference_method sft-low; the report compares with sft" in err

    trained.clear()
    assert main(["demo", "--quick", "--seeds", "0", "1", "--output_dir", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert trained == ["sft-seed0", "psft-K8-seed0", "sft-seed1", "psft-K8-seed1"]  # both seeds run
    assert "left out: sft-lr/3, sft-warmup" in err and "--quick runs seed" not in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["compare", "--methods", "sft", "psfft"],
            "unknown option --methods: methods is a CompareConfig field; set it in the --config YAML file",
        ),
        (
            ["compare", "--config", "e.yaml", "--seedz", "1"],
            "unrecognized arguments: --seedz 1; did you mean '--seeds'?",
        ),
        (["demo", "--eval_size", "3"], "unknown option --eval_size: eval_size is a CompareConfig field"),
        (["compare"], "one of the arguments --config --report is required"),
    ],
)
def test_an_unknown_option_is_named_before_a_missing_config(argv, expected, capsys):
    assert main(argv) == 2
    assert expected in _one_line(capsys, argv[0])


def test_prompts_are_gzipped_deterministically_and_old_plain_files_still_read(tmp_path):
    """A run's per-prompt results are gzipped (same rows, same bytes: committable); a run written before keeps
    its plain prompts.jsonl, still read; a damaged file is one line naming it."""
    rows = [
        {"step": 0, "id": ["arith:0"], "correct": [1.0]},
        {"step": 2, "id": ["arith:0"], "correct": [0.0]},
    ]
    first = write_prompts(rows, tmp_path / "a").read_bytes()
    assert write_prompts(rows, tmp_path / "b").read_bytes() == first
    assert read_prompts(tmp_path / "a") == rows
    old = tmp_path / "old"
    old.mkdir()
    (old / PLAIN_PROMPTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_prompts(old) == rows
    assert read_prompts(tmp_path) is None
    (tmp_path / "a" / "prompts.jsonl.gz").write_bytes(first[: len(first) // 2])
    with pytest.raises(UserError, match=r"prompts.jsonl.gz: unreadable"):
        read_prompts(tmp_path / "a")
