"""What a `psft compare` report concludes: per-setting estimates with intervals over seeds and prompts, each
method's frontier, matched comparisons on held-out data, Holm-corrected verdicts and a table of claims.

Two sources of noise: the seed (a run's data order and initialisation) and the finite set of evaluation prompts
(a run's accuracy on n prompts has a binomial error sqrt(p(1-p)/n)). Every interval on an accuracy, a held-out
NLL or a gap between methods comes from a bootstrap over both (`psft.experiments.stats`): each replicate draws seeds with
replacement and prompts with replacement (one prompt draw shared by every seed: the same prompts score every
run), and applies the same draws to both methods of a comparison, so gaps are paired by seed and prompt. Runs
without per-prompt results (written before `prompts.jsonl` existed) are resampled over seeds only. Metrics of
the training log (training NLL, entropy, clip share) have no prompt noise: seeds only.

Verdicts ("above", "below", "equivalent within ±m", "not resolved") come from tests whose p-values are
Holm-adjusted within each table (every method and level of it): "above"/"below" when the adjusted test of no
difference rejects at 5%, "equivalent" only when the adjusted two one-sided tests (TOST) reject a difference of
m or more, otherwise "not resolved".

The frontier of a method at an in-domain level is the best out-of-domain accuracy any of its runs (every
learning rate and other sweep value) has on its evaluation path, linearly interpolated between evaluations, at
in-domain accuracy >= that level. Matched held-out NLL: each run's out-of-domain accuracy (and entropy)
interpolated at the first point its held-out NLL falls to a target, best (for entropy: mean) over the method's
runs. Both answer "is this just a smaller learning rate?": a method is better only if it keeps more at the same
in-domain progress, whatever its learning rate.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from psft.experiments import stats

# two-sided 95% quantiles of Student's t, by degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip
LEVEL_STEP = 0.05  # in-domain accuracy levels at which frontiers are compared
METRICS = (
    "in_domain",
    "out_of_domain",
    "best_in_domain",
    "heldout_nll",
    "nll",
    "drift_kl",
    "entropy",
    "clip_high",
)
REPS = 1000  # bootstrap replicates
BOOT_SEED = 0  # the bootstrap's own random seed: the report is a deterministic function of the runs
ACCURACY_MARGIN = 0.03  # equivalence margin of accuracy gaps (TOST): +/- 3 points
ENTROPY_MARGIN = 0.05  # equivalence margin of entropy gaps: +/- 0.05 nats
NLL_TARGETS = 6  # matched held-out NLL levels between the base model's and the lowest every seed reaches


def t_quantile(df: int) -> float:
    """t(0.975, df): a table up to 30, then the Cornish-Fisher expansion around the normal quantile."""
    if df < 1:
        raise ValueError("degrees of freedom must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def estimate(values: list[float]) -> dict[str, Any]:
    """`{"n", "mean", "se", "ci95"}` of `values`; `se` and `ci95` are None for fewer than two values."""
    values = [v for v in values if v is not None]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "se": None, "ci95": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "se": None, "ci95": None}
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    half = t_quantile(n - 1) * se
    return {"n": n, "mean": mean, "se": se, "ci95": [mean - half, mean + half]}


def final_metrics(run: dict[str, Any]) -> dict[str, float | None]:
    """The end of one run: last evaluation's accuracies, held-out NLL and drift, last training log's NLL,
    entropy, clip (the prompt-level ones are replaced by bootstrap estimates in `summarize`)."""
    evals = run.get("evals") or [{}]
    last, curve = evals[-1], (run.get("curves") or [{}])[-1]
    best = [e["in_domain"] for e in evals if e.get("in_domain") is not None]
    return {
        "in_domain": last.get("in_domain"),
        "out_of_domain": last.get("out_of_domain"),
        "best_in_domain": max(best) if best else None,
        "heldout_nll": last.get("heldout_nll"),
        "nll": curve.get("nll"),
        "drift_kl": last.get("drift_kl"),
        "entropy": curve.get("entropy"),
        "clip_high": curve.get("clip_ratio/high"),
    }


def group_settings(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting (method x sweep point, the run's `name`): seeds, and an estimate of each final metric."""
    names = list(dict.fromkeys(r["name"] for r in runs))
    groups = []
    for name in names:
        members = [r for r in runs if r["name"] == name]
        finals = [final_metrics(r) for r in members]
        groups.append(
            {
                "name": name,
                "method": members[0]["method"],
                "overrides": members[0]["overrides"],
                "point": members[0].get("point", {}),
                "seeds": [r["seed"] for r in members],
                "metrics": {key: estimate([f[key] for f in finals]) for key in METRICS},
            }
        )
    return groups


def _levels(top: float) -> list[float]:
    return [round(LEVEL_STEP * i, 4) for i in range(1, int(top / LEVEL_STEP + 1e-9) + 1)]


def seed_frontier(runs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Upper-right frontier of every checkpoint of `runs`: (in-domain, best out-of-domain at >= that level)."""
    points = sorted(
        {(e["in_domain"], e["out_of_domain"]) for r in runs for e in r["evals"] if _complete(e)}, reverse=True
    )
    frontier, best = [], -1.0
    for x, y in points:  # from the highest in-domain down, keep points that raise the best out-of-domain
        if y > best:
            frontier.append((x, y))
            best = y
    return frontier[::-1]


def _complete(e: dict[str, Any]) -> bool:
    return e.get("in_domain") is not None and e.get("out_of_domain") is not None


def frontier_at(frontier: list[tuple[float, float]], level: float) -> float | None:
    """Best out-of-domain accuracy among frontier points with in-domain >= `level` (None: never reached)."""
    values = [y for x, y in frontier if x >= level - 1e-9]
    return max(values) if values else None


def _ranges(levels: list[float]) -> str:
    """`[0.05, 0.1, 0.15, 0.3]` -> "5-15%, 30%"."""
    spans, start, prev = [], None, None
    for x in levels:
        if start is None:
            start = prev = x
        elif x - prev > LEVEL_STEP + 1e-9:
            spans.append((start, prev))
            start = x
        prev = x
    if start is not None:
        spans.append((start, prev))
    return ", ".join(f"{100 * a:.0f}%" if a == b else f"{100 * a:.0f}-{100 * b:.0f}%" for a, b in spans)


# --- per-run arrays ---------------------------------------------------------------------------------------


class _Data:
    """Every run as arrays over evaluations x prompts, the bootstrap's draws, and the results under them.

    `correct[id]` (E, P): share correct of each prompt at each evaluation (prompt order shared by all runs);
    `nll[id]` (E, P): held-out NLL per prompt (NaN where none); `entropy[id]` (E,): training-log entropy at
    the evaluation steps. Without per-prompt results every run has two pseudo-prompts (its in-domain and
    out-of-domain accuracy) that are never resampled."""

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
        """(B, E) path of `what` ("in", "out", "nll", "entropy") of a run under the bootstrap weights (B = reps)
        or the data themselves (`point`: B = 1)."""
        key = (run_id, what, point)
        if key not in self._cache:
            W = np.ones((1, len(self.ids))) if point else self.W
            if what == "entropy":
                value = np.broadcast_to(self.entropy[run_id], (W.shape[0], len(self.entropy[run_id])))
            elif what == "nll":
                nll = self.nll[run_id]
                mask = np.isfinite(nll)
                with np.errstate(invalid="ignore", divide="ignore"):
                    value = (W @ np.nan_to_num(nll).T) / (W @ mask.T.astype(float))
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
    sets = [{r["seed"] for r in data.runs.values() if r["method"] == m} for m in methods]
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
    out = stats.summarize_replicates(est, reps)
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


# --- what the report states ----------------------------------------------------------------------------


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
    est["tost_p"] = stats.tost(est["mean"], est["se"], margin) if testable else None
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
    methods reaches (both excluded)."""
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
    return [float(top - (top - floor) * k / (NLL_TARGETS + 1)) for k in range(1, NLL_TARGETS + 1)]


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


def equal_settings(data: _Data, groups: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Each setting against the reference method's setting with the same sweep values (same learning rate):
    final gaps paired by seed and prompt; the entropy gap over every logged step (equal step). Holm families:
    the accuracy gaps of the table; the entropy gaps."""
    out, acc_family, ent_family = [], [], []
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

        def entropy_gap(s, pt, a_name=g["name"], b_name=twin["name"]):
            a = data.runs[_setting_runs(data, a_name, s)]
            b = data.runs[_setting_runs(data, b_name, s)]
            return np.full(1 if pt else data.reps, entropy_equal_step(a, b))

        gap["entropy"] = _test(_bootstrap(data, seeds, entropy_gap), ENTROPY_MARGIN)
        ent_family.append(gap["entropy"])
        out.append({"setting": g["name"], "reference_setting": twin["name"], "seeds": seeds, "gap": gap})
    _adjust(acc_family)
    _adjust(ent_family, unit="nats", scale=1)
    return out


def setting_estimates(data: _Data, groups: list[dict[str, Any]]) -> None:
    """Replace the prompt-level metrics of each group by bootstrap estimates over its seeds and prompts, and
    add `noise`: the two sources of a final accuracy's error, the prompt one (binomial sqrt(p(1-p)/n) of one
    run, mean over seeds) and the seed one (standard deviation across seeds)."""
    n_in, n_out = int(data.in_mask.sum()), int(data.out_mask.sum())
    for g in groups:
        seeds = g["seeds"]
        for key, what in (("in_domain", "in"), ("out_of_domain", "out"), ("best_in_domain", "best_in"),
                          ("heldout_nll", "nll")):  # fmt: skip
            est = _bootstrap(
                data, seeds, lambda s, pt, w=what, n=g["name"]: _final(data, _setting_runs(data, n, s), w, pt)
            )
            g["metrics"][key] = {"n": len(seeds), **{k: est.get(k) for k in ("mean", "se", "ci95")}}
        noise = {}
        for key, what, n in (("in_domain", "in", n_in), ("out_of_domain", "out", n_out)):
            finals = [float(_final(data, _setting_runs(data, g["name"], s), what, True)[0]) for s in seeds]
            finals = [f for f in finals if np.isfinite(f)]
            noise[key] = {
                "prompts": n if data.prompt_level else None,
                "prompt_se": float(np.mean([math.sqrt(p * (1 - p) / n) for p in finals]))
                if finals and data.prompt_level else None,
                "seed_sd": float(np.std(finals, ddof=1)) if len(finals) > 1 else None,
            }  # fmt: skip
        g["noise"] = noise


CLAIMS = (
    ("frontier", "{m} keeps more out-of-domain accuracy than {r} at matched in-domain accuracy"),
    ("matched_nll", "{m} keeps more out-of-domain accuracy than {r} at matched held-out NLL"),
    ("entropy_step", "{m}'s entropy stays higher than {r}'s at equal step"),
    ("entropy_nll", "{m}'s entropy is higher than {r}'s at matched held-out NLL"),
)


def claims(
    data: _Data, methods: list[str], reference: str, frontier: list, matched: list, equal: list
) -> list:
    """The claims table: for each method and claim, the effect (mean over the levels, targets or equal-LR pairs
    of the comparison, paired by seed and prompt) with its bootstrap interval, the test of "no effect"
    Holm-adjusted over every claim of the table, and "holds" (adjusted p < 0.05, effect in the claimed
    direction), "does not hold" (the opposite direction shown, or equivalence within the margin) or "not
    resolved"."""
    rows = []
    for method in methods:
        seeds = _seeds(data, method, reference)
        f = next(x for x in frontier if x["method"] == method)
        n = next(x for x in matched if x["method"] == method)
        levels = [lv["level"] for lv in f["levels"]]
        targets = [t["target"] for t in n["targets"]]
        pairs = [e for e in equal if data.runs[_setting_runs(data, e["setting"], e["seeds"][0])]["method"] == method
                 and e["seeds"]]  # fmt: skip

        def mean_over(values: list[np.ndarray], like: int) -> np.ndarray:
            if not values:
                return np.full(like, np.nan)
            return _nanmean(np.stack(values))

        def frontier_effect(s, pt, method=method, levels=levels):
            return mean_over([frontier_value(data, method, s, lv, pt) - frontier_value(data, reference, s, lv, pt)
                              for lv in levels], 1 if pt else data.reps)  # fmt: skip

        def nll_effect(s, pt, what="out", method=method, targets=targets):
            return mean_over([matched_value(data, method, s, t, what, pt) - matched_value(data, reference, s, t, what, pt)
                              for t in targets], 1 if pt else data.reps)  # fmt: skip

        def entropy_effect(s, pt, pairs=pairs):
            gaps = []
            for e in pairs:
                a, b = _setting_runs(data, e["setting"], s), _setting_runs(data, e["reference_setting"], s)
                if a and b:
                    gaps.append(entropy_equal_step(data.runs[a], data.runs[b]))
            finite = [g for g in gaps if np.isfinite(g)]
            return np.full(1 if pt else data.reps, np.mean(finite) if finite else np.nan)

        effects = {
            "frontier": (frontier_effect, ACCURACY_MARGIN, "points", 100,
                         f"mean over in-domain levels {_ranges(levels) or '-'}"),
            "matched_nll": (nll_effect, ACCURACY_MARGIN, "points", 100,
                            f"mean over {len(targets)} held-out NLL targets"),
            "entropy_step": (entropy_effect, ENTROPY_MARGIN, "nats", 1,
                             f"mean over {len(pairs)} equal-learning-rate pair(s) and every logged step"),
            "entropy_nll": (lambda s, pt: nll_effect(s, pt, "entropy"), ENTROPY_MARGIN, "nats", 1,
                            f"mean over {len(targets)} held-out NLL targets"),
        }  # fmt: skip
        for key, text in CLAIMS:
            fn, margin, unit, scale, over = effects[key]
            est = _test(_bootstrap(data, seeds, fn), margin)
            rows.append({"claim": text.format(m=method, r=reference), "kind": key, "method": method,
                         "reference": reference, "unit": unit, "scale": scale, "over": over, **est})  # fmt: skip
    for key, adjusted in (("p", "p_holm"), ("tost_p", "tost_holm")):
        for row, value in zip(rows, stats.holm([r.get(key) for r in rows]), strict=True):
            row[adjusted] = value
    for row in rows:
        word = stats.verdict(row["mean"], row["p_holm"], row["tost_holm"], row["margin"], unit=row["unit"],
                             scale=row["scale"])  # fmt: skip
        row["test"] = word
        row["holds"] = {"above": "holds", "below": "does not hold"}.get(
            word, "does not hold" if word.startswith("equivalent") else "not resolved"
        )
        row["family"] = len([r for r in rows if r.get("p") is not None])
    return rows


def method_frontiers(data: _Data) -> dict[str, dict[str, Any]]:
    """Per method, for the plot: each seed's interpolated frontier at every level, and across seeds and prompts
    the bootstrap estimate at the levels every seed reached."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in data.runs.values()):
        seeds = _seeds(data, method)
        top = max((_reach(data, method, s, "in") for s in seeds), default=0.0)
        per_seed = {str(s): [] for s in seeds}
        levels = []
        for level in _levels(top if np.isfinite(top) else 0.0):
            for s in seeds:
                v = float(frontier_value(data, method, s, level, True)[0])
                if np.isfinite(v):
                    per_seed[str(s)].append((level, v))
            reached = [s for s in seeds if np.isfinite(frontier_value(data, method, s, level, True)[0])]
            est = _bootstrap(
                data, reached, lambda s, pt, lv=level, m=method: frontier_value(data, m, s, lv, pt)
            )
            levels.append({"level": level, "seeds": len(seeds), "n": len(reached),
                           **{k: est.get(k) for k in ("mean", "se", "ci95")}})  # fmt: skip
        out[method] = {"seeds": per_seed, "levels": levels}
    return out


def summarize(
    runs: list[dict[str, Any]],
    reference: str | None = None,
    prompts: dict[str, list[dict[str, Any]]] | None = None,
    reps: int = REPS,
) -> dict[str, Any]:
    """Everything the report states, from the finished runs (any subset of the planned ones) and their
    per-prompt results (`prompts`: run id -> the entries of its prompts.jsonl)."""
    empty = {"groups": [], "frontiers": {}, "frontier_gaps": [], "matched_nll": [], "equal_settings": [],
             "claims": []}  # fmt: skip
    if not runs:
        return empty
    methods = list(dict.fromkeys(r["method"] for r in runs))
    reference = reference if reference in methods else methods[0]
    others = [m for m in methods if m != reference]
    data = _Data(runs, prompts, reps, BOOT_SEED)
    groups = group_settings(runs)
    setting_estimates(data, groups)
    frontier = frontier_gaps(data, others, reference)
    matched = matched_nll(data, others, reference)
    equal = equal_settings(data, groups, reference)
    return {
        "reference": reference,
        "noise": {
            "prompt_level": data.prompt_level,
            "in_domain_prompts": int(data.in_mask.sum()) if data.prompt_level else None,
            "out_of_domain_prompts": int(data.out_mask.sum()) if data.prompt_level else None,
            "reps": reps,
            "accuracy_margin": ACCURACY_MARGIN,
            "entropy_margin": ENTROPY_MARGIN,
        },
        "groups": groups,
        "frontiers": method_frontiers(data),
        "frontier_gaps": frontier,
        "matched_nll": matched,
        "equal_settings": equal,
        "claims": claims(data, others, reference, frontier, matched, equal),
    }
