"""Comparisons between methods with their uncertainty: bootstrap over seeds and prompts of frontier gaps,
matched held-out NLL, equal-setting gaps and entropy at equal step; Holm-adjusted verdicts with TOST; the
claims table."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from psft.experiments import stats
from psft.experiments.estimates import (
    ACCURACY_MARGIN,
    BOOT_SEED,
    DRIFT_MARGIN,
    ENTROPY_MARGIN,
    NLL_TARGETS,
    _levels,
)


class _Data:
    """Every run as arrays over evaluations x prompts, the bootstrap's draws, and the results under them.

    `correct[id]` (E, P): share correct of each prompt at each evaluation (prompt order shared by all runs);
    `nll[id]` (E, P): held-out NLL per prompt (NaN where none); `entropy[id]` (E,): training-log entropy at
    the evaluation steps; `tasks`: evaluation set -> its group ("in_domain", "out_of_domain"; None when not
    recorded), and per run `task_acc[id][task]` (E,) the set's accuracy as the run logged it. Without
    per-prompt results every run has two pseudo-prompts (its in-domain and out-of-domain accuracy) that are
    never resampled, and a set's accuracy is resampled over seeds only."""

    def __init__(
        self, runs: list[dict[str, Any]], prompts: dict[str, list[dict]] | None, reps: int, seed: int
    ):
        self.runs = {r["id"]: r for r in runs}
        prompts = prompts or {}
        self.prompt_level = bool(runs) and all(
            prompts.get(r["id"]) and "id" in prompts[r["id"]][0] for r in runs
        )
        if self.prompt_level:
            first = prompts[runs[0]["id"]][0]
            self.ids = list(first["id"])
            groups = first.get("group") or []
            self.in_mask = np.array([g == "in_domain" for g in groups], dtype=float)
            self.prompt_level = all(
                list(e.get("id", [])) == self.ids for r in runs for e in prompts[r["id"]]
            ) and len(groups) == len(self.ids)
        if not self.prompt_level:
            self.ids = ["in_domain", "out_of_domain"]
            self.in_mask = np.array([1.0, 0.0])
        self.out_mask = 1.0 - self.in_mask
        self.tasks: dict[str, str | None] = {}
        self.task_of = np.array([], dtype=object)  # per prompt, its evaluation set (prompt-level data only)
        if self.prompt_level and len(first.get("task") or []) == len(self.ids):
            self.task_of = np.array(first["task"], dtype=object)
            self.tasks = dict(zip(first["task"], groups, strict=True))
        for r in runs:
            for e in r.get("evals") or []:
                for task in e.get("tasks") or {}:
                    self.tasks.setdefault(task, None)
        self.task_acc = {
            r["id"]: {t: np.array([_nan((e.get("tasks") or {}).get(t)) for e in r.get("evals") or []])
                      for t in self.tasks}
            for r in runs
        }  # fmt: skip
        self.steps, self.correct, self.nll, self.entropy = {}, {}, {}, {}
        index = {pid: i for i, pid in enumerate(self.ids)}
        for r in runs:
            evals = r.get("evals") or []
            by_step = {e["step"]: e for e in (prompts.get(r["id"]) or [])}
            steps = [e["step"] for e in evals]
            correct = np.full((len(evals), len(self.ids)), np.nan)
            nll = np.full((len(evals), len(self.ids)), np.nan)
            for i, e in enumerate(evals):
                if self.prompt_level and e["step"] in by_step:
                    entry = by_step[e["step"]]
                    correct[i] = entry["correct"]
                    for pid, value in zip(
                        entry.get("heldout_id", []), entry.get("heldout_nll", []), strict=True
                    ):
                        if pid in index:
                            nll[i, index[pid]] = value
                elif not self.prompt_level:
                    correct[i] = [_nan(e.get("in_domain")), _nan(e.get("out_of_domain"))]
                    nll[i, 0] = _nan(e.get("heldout_nll"))
            self.steps[r["id"]] = np.array(steps, dtype=float)
            self.correct[r["id"]], self.nll[r["id"]] = correct, nll
            curve = [(c["step"], c["entropy"]) for c in r.get("curves") or [] if c.get("entropy") is not None]
            if curve:
                xs, ys = zip(*curve, strict=True)
                self.entropy[r["id"]] = np.interp(steps, xs, ys, left=np.nan, right=ys[-1])
            else:
                self.entropy[r["id"]] = np.full(len(steps), np.nan)
        rng = np.random.default_rng(seed)
        n = len(self.ids)
        self.reps = reps
        if self.prompt_level:
            self.W = rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(float)
        else:
            self.W = np.ones((reps, n))
        self.seed_rng = rng
        self._cache: dict[tuple, np.ndarray] = {}

    def seed_draws(self, n_seeds: int) -> np.ndarray:
        """(reps, n_seeds) seed indices, drawn once per number of seeds (so every comparison of the same
        seeds uses the same draws)."""
        key = ("seeds", n_seeds)
        if key not in self._cache:
            rng = np.random.default_rng([BOOT_SEED, n_seeds])
            self._cache[key] = (
                rng.integers(0, n_seeds, (self.reps, n_seeds))
                if n_seeds > 1
                else np.zeros((self.reps, 1), int)
            )
        return self._cache[key]

    def path(self, run_id: str, what: str, point: bool) -> np.ndarray:
        """(B, E) path of `what` ("in", "out", "nll", "entropy", or "task:<set>": one evaluation set's accuracy)
        of a run under the bootstrap weights (B = reps) or the data themselves (`point`: B = 1)."""
        key = (run_id, what, point)
        if key not in self._cache:
            W = np.ones((1, len(self.ids))) if point else self.W
            task = what.removeprefix("task:") if what.startswith("task:") else None
            if what == "entropy" or (task is not None and not len(self.task_of)):
                path = self.entropy[run_id] if task is None else self.task_acc[run_id][task]
                value = np.broadcast_to(path, (W.shape[0], len(path)))
            elif what == "nll":
                nll = self.nll[run_id]
                mask = np.isfinite(nll)
                with np.errstate(invalid="ignore", divide="ignore"):
                    value = (W @ np.nan_to_num(nll).T) / (W @ mask.T.astype(float))
            else:
                if task is not None:
                    mask = (self.task_of == task).astype(float)
                else:
                    mask = self.in_mask if what == "in" else self.out_mask
                c = self.correct[run_id]
                with np.errstate(invalid="ignore", divide="ignore"):
                    value = (W @ (np.nan_to_num(c) * mask).T) / (W @ mask)[:, None]
                value[:, np.isnan(c).all(axis=1)] = np.nan
            self._cache[key] = value
        return self._cache[key]


def _nan(value: float | None) -> float:
    return np.nan if value is None else float(value)


def _runs_of(data: _Data, method: str, seed: int) -> list[str]:
    return [i for i, r in data.runs.items() if r["method"] == method and r["seed"] == seed]


def _seeds(data: _Data, *methods: str) -> list[int]:
    """The seeds at which every method has finished every one of its settings. A seed with part of a method's
    grid would enter its frontier (a best over its runs) with fewer runs than the other's: biased against it,
    which is what a study run in pieces shows midway."""
    sets = []
    for m in methods:
        runs = [r for r in data.runs.values() if r["method"] == m]
        settings = {r["name"] for r in runs}
        sets.append(
            {s for s in {r["seed"] for r in runs} if {r["name"] for r in runs if r["seed"] == s} == settings}
        )
    return sorted(set.intersection(*sets)) if sets else []


def _bootstrap(data: _Data, seeds: list[int], per_seed) -> dict[str, Any]:
    """Estimate of the mean over `seeds` of `per_seed(seed, point) -> (B,)` with its bootstrap interval and
    p-value: replicates draw seeds (and, inside `per_seed`, prompts) with replacement."""
    if not seeds:
        return stats.summarize_replicates(np.nan, np.array([]))
    point = np.array([per_seed(s, True)[0] for s in seeds])
    values = np.stack([per_seed(s, False) for s in seeds])  # (S, B)
    draws = data.seed_draws(len(seeds))
    reps = values[draws, np.arange(data.reps)[:, None]].mean(axis=1)
    est = float(point.mean()) if np.isfinite(point).all() else np.nan
    out = stats.seed_corrected(stats.summarize_replicates(est, reps), point, values.mean(axis=0))
    out["n"] = len(seeds)
    if len(seeds) < 2:  # the seed noise is not measured: an interval over prompts alone, and no test
        out["p"] = None
        if out.get("se") is not None and out["se"] < 1e-12:
            out["se"] = out["ci95"] = None
    return out


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN where every value is NaN (without numpy's warning)."""
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    total = np.where(finite, values, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _fmax(arrays: list[np.ndarray], like: int) -> np.ndarray:
    if not arrays:
        return np.full(like, np.nan)
    return np.fmax.reduce(np.stack(arrays), axis=0)


def frontier_value(data: _Data, method: str, seed: int, level: float, point: bool) -> np.ndarray:
    """(B,) the method's frontier at in-domain `level` for one seed: best interpolated out-of-domain accuracy
    over its runs' paths at in-domain >= level (NaN: not reached)."""
    values = [
        stats.upper_frontier_at(data.path(i, "in", point), data.path(i, "out", point), level)
        for i in _runs_of(data, method, seed)
    ]
    return _fmax(values, 1 if point else data.reps)


def matched_value(data: _Data, method: str, seed: int, target: float, what: str, point: bool) -> np.ndarray:
    """(B,) at held-out NLL `target`: the best out-of-domain accuracy (`what="out"`) or the mean entropy
    (`"entropy"`) over the method's runs, each interpolated where its held-out NLL first falls to `target`."""
    values = [
        stats.interpolate_paths(
            data.path(i, "nll", point), data.path(i, what, point), target, decreasing=True
        )
        for i in _runs_of(data, method, seed)
    ]
    if what == "out":
        return _fmax(values, 1 if point else data.reps)
    if not values:
        return np.full(1 if point else data.reps, np.nan)
    return _nanmean(np.stack(values))


def _reach(data: _Data, method: str, seed: int, what: str) -> float:
    """Highest in-domain accuracy (`"in"`) or lowest held-out NLL (`"nll"`) any run of method/seed reaches."""
    values = [data.path(i, what, True)[0] for i in _runs_of(data, method, seed)]
    values = [v[np.isfinite(v)] for v in values]
    values = [v for v in values if len(v)]
    if not values:
        return np.nan
    return max(v.max() for v in values) if what == "in" else min(v.min() for v in values)


def _test(est: dict[str, Any], margin: float) -> dict[str, Any]:
    """Adds the TOST p-value of "|gap| >= margin" to a bootstrap estimate."""
    est = dict(est)
    testable = est.get("se") is not None and est.get("p") is not None
    est["tost_p"] = stats.tost(est["mean"], est["se"], margin, est.get("df", math.inf)) if testable else None
    est["margin"] = margin
    return est


def _adjust(tests: list[dict[str, Any]], unit: str = "points", scale: float = 100) -> None:
    """Holm over the family `tests` (in place): `p_holm`, `tost_holm` and the `verdict` word of each."""
    for key, adjusted in (("p", "p_holm"), ("tost_p", "tost_holm")):
        for t, value in zip(tests, stats.holm([t.get(key) for t in tests]), strict=True):
            t[adjusted] = value
    for t in tests:
        t["verdict"] = stats.verdict(t.get("mean"), t.get("p_holm"), t.get("tost_holm"), t.get("margin"),
                                     unit=unit, scale=scale)  # fmt: skip
    for t in tests:
        t["family"] = len([x for x in tests if x.get("p") is not None])


def frontier_gaps(data: _Data, methods: list[str], reference: str) -> list[dict[str, Any]]:
    """Per method: its frontier minus the reference's at every in-domain level every shared seed of both
    reaches, paired by seed and prompt; one Holm family over every method and level."""
    out, family = [], []
    for method in methods:
        seeds = _seeds(data, method, reference)
        top = min((_reach(data, m, s, "in") for m in (method, reference) for s in seeds), default=np.nan)
        levels = []
        for level in _levels(top) if np.isfinite(top) else []:
            est = _bootstrap(data, seeds, lambda s, pt, lv=level, m=method: frontier_value(data, m, s, lv, pt)
                             - frontier_value(data, reference, s, lv, pt))  # fmt: skip
            levels.append({"level": level, **_test(est, ACCURACY_MARGIN)})
        family += levels
        out.append({"method": method, "reference": reference, "seeds": seeds, "levels": levels})
    _adjust(family)
    return out


def nll_targets(data: _Data, method: str, reference: str, seeds: list[int]) -> list[float]:
    """`NLL_TARGETS` held-out NLL levels evenly spaced between the base model's and the lowest every seed of both
    methods reaches (both excluded), less those every run reaches before its first evaluation after step 0."""
    base = [
        data.path(i, "nll", True)[0][0] for i in data.runs if data.runs[i]["method"] in (method, reference)
    ]
    base = [b for b in base if np.isfinite(b)]
    floor = max((_reach(data, m, s, "nll") for m in (method, reference) for s in seeds), default=np.nan)
    if not base or not np.isfinite(floor) or floor >= min(base):
        return []
    top = min(base)
    # evenly spaced strictly inside (floor, base): at the floor itself one seed only touches the target, and
    # resampled prompts would often leave it unreached
    targets = [float(top - (top - floor) * k / (NLL_TARGETS + 1)) for k in range(1, NLL_TARGETS + 1)]
    runs = [i for m in (method, reference) for s in seeds for i in _runs_of(data, m, s)]
    return [t for t in targets if not _only_before_first_evaluation(data, runs, t)]


def _only_before_first_evaluation(data: _Data, runs: list[str], target: float) -> bool:
    """Whether every run's held-out NLL first falls to `target` between step 0 and its first evaluation after
    it. There the matched values of every run are interpolated from the same point (the base model, shared by
    all runs) to that evaluation: the comparison would measure where the target sits on that line, not the
    methods (a study evaluating every 2 epochs on a small set: the NLL reaches its floor before the first)."""
    for i in runs:
        nll = data.path(i, "nll", True)[0]
        reached = np.flatnonzero(nll <= target)
        if len(reached) and reached[0] > 1:
            return False
    return bool(runs)


def matched_nll(data: _Data, methods: list[str], reference: str) -> list[dict[str, Any]]:
    """Per method, at each held-out NLL target: out-of-domain accuracy gap (Holm family: every method and
    target) and entropy gap (its own family), paired by seed and prompt."""
    out, acc_family, ent_family = [], [], []
    for method in methods:
        seeds = _seeds(data, method, reference)
        rows = []
        for target in nll_targets(data, method, reference, seeds):
            gaps = {}
            for what, margin in (("out", ACCURACY_MARGIN), ("entropy", ENTROPY_MARGIN)):
                est = _bootstrap(data, seeds, lambda s, pt, t=target, w=what, m=method: matched_value(
                    data, m, s, t, w, pt) - matched_value(data, reference, s, t, w, pt))  # fmt: skip
                gaps[what] = _test(est, margin)
            acc_family.append(gaps["out"])
            ent_family.append(gaps["entropy"])
            rows.append({"target": target, "out_of_domain": gaps["out"], "entropy": gaps["entropy"]})
        out.append({"method": method, "reference": reference, "seeds": seeds, "targets": rows})
    _adjust(acc_family)
    _adjust(ent_family, unit="nats", scale=1)
    return out


def _twin(groups: list[dict[str, Any]], g: dict[str, Any], reference: str) -> dict[str, Any] | None:
    point = g.get("point") or {}
    return next((r for r in groups if r["method"] == reference and (r.get("point") or {}) == point), None)


def _setting_runs(data: _Data, name: str, seed: int) -> str | None:
    return next((i for i, r in data.runs.items() if r["name"] == name and r["seed"] == seed), None)


def _final(data: _Data, run_id: str, what: str, point: bool) -> np.ndarray:
    path = data.path(run_id, what, point)
    if what == "best_in":
        path = data.path(run_id, "in", point)
        return np.fmax.reduce(path, axis=1) if path.shape[1] else np.full(path.shape[0], np.nan)
    return path[:, -1] if path.shape[1] else np.full(path.shape[0], np.nan)


def entropy_equal_step(run_a: dict[str, Any], run_b: dict[str, Any]) -> float:
    """Mean over the training-log steps both runs logged (after the first) of entropy(a) - entropy(b)."""
    a = {c["step"]: c["entropy"] for c in run_a.get("curves") or [] if c.get("entropy") is not None}
    b = {c["step"]: c["entropy"] for c in run_b.get("curves") or [] if c.get("entropy") is not None}
    steps = sorted(set(a) & set(b))[1:]
    return float(np.mean([a[s] - b[s] for s in steps])) if steps else np.nan


def drift_final(run: dict[str, Any]) -> float:
    """The run's drift (KL from the base on the out-of-domain texts, nats per token) at its last evaluation."""
    value = ((run.get("evals") or [{}])[-1]).get("drift_kl")
    return float(value) if value is not None else np.nan


def _seed_only(data: _Data, value: float, pt: bool) -> np.ndarray:
    """A per-run statistic without prompt-level data: the same value in every prompt replicate."""
    return np.full(1 if pt else data.reps, value)


def drift_gap(run_a: dict[str, Any], run_b: dict[str, Any]) -> float:
    """Final drift of run a minus run b's (nats per token)."""
    return drift_final(run_a) - drift_final(run_b)


def pairs_of(data: _Data, equal: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    """The equal-learning-rate pairs (rows of `equal_settings`) whose setting is one of `method`'s."""
    return [e for e in equal if e["seeds"] and data.runs[_setting_runs(data, e["setting"], e["seeds"][0])]
            ["method"] == method]  # fmt: skip


def pair_mean(
    data: _Data, pairs: list[dict[str, Any]], seed: int, pt: bool, gap: Callable[[dict, dict], float]
) -> np.ndarray:
    """One seed's replicate of a per-run-pair statistic `gap(run, reference_run)`: its mean over the pairs both
    of whose runs exist at that seed, finite values only (NaN if none); seeds only, no prompt noise."""
    values = []
    for e in pairs:
        a, b = _setting_runs(data, e["setting"], seed), _setting_runs(data, e["reference_setting"], seed)
        if a and b:
            values.append(gap(data.runs[a], data.runs[b]))
    finite = [x for x in values if np.isfinite(x)]
    return _seed_only(data, float(np.mean(finite)) if finite else np.nan, pt)


def equal_settings(data: _Data, groups: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Each setting against the reference method's setting with the same sweep values (same learning rate):
    final gaps paired by seed and prompt; the entropy gap over every logged step (equal step) and the final
    drift gap (seeds only). Holm families: the accuracy gaps of the table; the entropy gaps; the drift gaps."""
    out, acc_family, ent_family, drift_family = [], [], [], []
    for g in groups:
        twin = _twin(groups, g, reference)
        if g["method"] == reference or twin is None:
            continue
        seeds = sorted(set(g["seeds"]) & set(twin["seeds"]))
        gap = {}
        for key, what in (("in_domain", "in"), ("out_of_domain", "out"), ("heldout_nll", "nll")):

            def per_seed(s, pt, w=what, a_name=g["name"], b_name=twin["name"]):
                a, b = _setting_runs(data, a_name, s), _setting_runs(data, b_name, s)
                return _final(data, a, w, pt) - _final(data, b, w, pt)

            gap[key] = _test(_bootstrap(data, seeds, per_seed), ACCURACY_MARGIN)
        acc_family += [gap["in_domain"], gap["out_of_domain"]]

        pair = [{"setting": g["name"], "reference_setting": twin["name"]}]

        def entropy_gap(s, pt, pair=pair):
            return pair_mean(data, pair, s, pt, entropy_equal_step)

        def drift_gap_of(s, pt, pair=pair):
            return pair_mean(data, pair, s, pt, drift_gap)

        gap["entropy"] = _test(_bootstrap(data, seeds, entropy_gap), ENTROPY_MARGIN)
        gap["drift"] = _test(_bootstrap(data, seeds, drift_gap_of), DRIFT_MARGIN)
        ent_family.append(gap["entropy"])
        drift_family.append(gap["drift"])
        out.append({"setting": g["name"], "reference_setting": twin["name"], "seeds": seeds, "gap": gap})
    _adjust(acc_family)
    _adjust(ent_family, unit="nats", scale=1)
    _adjust(drift_family, unit="nats", scale=1)
    return out


def drift_gaps(data: _Data, equal: list[dict[str, Any]], methods: list[str], reference: str) -> list[dict]:
    """Per method: its final drift minus the reference's, mean over its equal-setting pairs (the same learning
    rate), seeds only (drift is one number per run). One Holm family over the methods."""
    out = []
    for method in methods:
        pairs = pairs_of(data, equal, method)

        def effect(s, pt, pairs=pairs):
            return pair_mean(data, pairs, s, pt, drift_gap)

        if pairs:
            seeds = _seeds(data, method, reference)
            est = _test(_bootstrap(data, seeds, effect), DRIFT_MARGIN)
            out.append({"method": method, "reference": reference, "pairs": len(pairs), "seeds": seeds, **est})
    _adjust(out, unit="nats", scale=1)
    return out
