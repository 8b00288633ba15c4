"""What a `psft compare` report concludes: per-setting means with intervals, each method's frontier, paired gaps
and a verdict that never claims more than the intervals allow.

Every number across seeds is a mean with its standard error and a two-sided 95% Student-t interval
(`mean ± t(0.975, n-1) · SE`), honest for the 2-5 seeds a sweep can afford; one seed gives no interval.
Seeds are paired: runs with the same seed see the same data order and the same evaluation prompts, so gaps
between methods are computed seed by seed and then averaged.

The frontier of a method is the best out-of-domain accuracy among all its evaluated checkpoints (every
learning rate and other sweep value, every evaluation step) that reach at least a given in-domain accuracy.
It answers the reviewers' question ("is this just a smaller learning rate?"): a method is better only if its
frontier lies above the other's at the in-domain levels both reach.
"""

from __future__ import annotations

import math
from typing import Any

# two-sided 95% quantiles of Student's t, by degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip
LEVEL_STEP = 0.05  # in-domain accuracy levels at which frontiers are compared
METRICS = ("in_domain", "out_of_domain", "best_in_domain", "nll", "drift_kl", "entropy", "clip_high")


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
    """The end of one run: last evaluation's accuracies and drift, last training log's NLL, entropy, clip."""
    evals = run.get("evals") or [{}]
    last, curve = evals[-1], (run.get("curves") or [{}])[-1]
    best = [e["in_domain"] for e in evals if e.get("in_domain") is not None]
    return {
        "in_domain": last.get("in_domain"),
        "out_of_domain": last.get("out_of_domain"),
        "best_in_domain": max(best) if best else None,
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


def method_frontiers(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: each seed's frontier, and across seeds at each in-domain level the estimate of the best
    out-of-domain accuracy (over the seeds that reached the level; `n` says how many did)."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        by_seed = {
            seed: seed_frontier([r for r in runs if r["method"] == method and r["seed"] == seed])
            for seed in sorted({r["seed"] for r in runs if r["method"] == method})
        }
        top = max((f[-1][0] for f in by_seed.values() if f), default=0.0)
        levels = []
        for level in _levels(top):
            values = [frontier_at(f, level) for f in by_seed.values()]
            levels.append({"level": level, "seeds": len(by_seed), **estimate(values)})
        out[method] = {"seeds": {str(s): f for s, f in by_seed.items()}, "levels": levels}
    return out


def paired_frontier_gap(runs: list[dict[str, Any]], method: str, reference: str) -> dict[str, Any]:
    """`method` minus `reference` frontier, seed by seed, at every level every shared seed of both reached."""
    seeds = sorted(
        {r["seed"] for r in runs if r["method"] == method}
        & {r["seed"] for r in runs if r["method"] == reference}
    )
    fronts = {
        (m, s): seed_frontier([r for r in runs if r["method"] == m and r["seed"] == s])
        for m in (method, reference)
        for s in seeds
    }
    top = min((f[-1][0] if f else 0.0) for f in fronts.values()) if fronts else 0.0
    levels, per_seed = [], {s: [] for s in seeds}
    for level in _levels(top):
        gaps = [
            frontier_at(fronts[(method, s)], level) - frontier_at(fronts[(reference, s)], level)
            for s in seeds
        ]
        for s, gap in zip(seeds, gaps, strict=True):
            per_seed[s].append(gap)
        levels.append({"level": level, **estimate(gaps)})
    # one number per seed (its mean gap over the shared levels), so one interval answers "above on average?"
    # without the multiplicity of many pointwise intervals
    average = estimate([sum(g) / len(g) for g in per_seed.values() if g])
    verdict = frontier_verdict(method, reference, levels, len(seeds), average)
    return {
        "method": method,
        "reference": reference,
        "seeds": seeds,
        "levels": levels,
        "average_gap": average,
        "verdict": verdict,
    }


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


def _points(lo: float, hi: float) -> str:
    return f"{100 * lo:+.1f} to {100 * hi:+.1f} points"


def frontier_verdict(
    method: str,
    reference: str,
    levels: list[dict[str, Any]],
    n_seeds: int,
    average: dict[str, Any] | None = None,
) -> str:
    """Plain words: dominates / crosses / above in part / equal within noise; never more than the intervals say.
    The verdict reads the pointwise intervals; `average` (the per-seed mean gap over the levels) is appended."""
    text = _verdict(method, reference, levels, n_seeds)
    if average and average.get("ci95"):
        low, high = average["ci95"]
        text += (
            f" Averaged over these levels: {100 * average['mean']:+.1f} points [95% CI {100 * low:+.1f}, "
            f"{100 * high:+.1f}]."
        )
    return text


def _verdict(method: str, reference: str, levels: list[dict[str, Any]], n_seeds: int) -> str:
    if not levels:
        return f"{method} vs {reference}: no in-domain level of at least {100 * LEVEL_STEP:.0f}% was reached by every seed of both; no comparison."
    span = f"in-domain {100 * levels[0]['level']:.0f}-{100 * levels[-1]['level']:.0f}%"
    means = [lv["mean"] for lv in levels]
    if n_seeds < 2:
        return (
            f"{method} vs {reference} ({span}): one seed, so no interval and no verdict; the single-seed frontier gap "
            f"ranges {_points(min(means), max(means))} out-of-domain."
        )
    above = [lv["level"] for lv in levels if lv["ci95"][0] > 0]
    below = [lv["level"] for lv in levels if lv["ci95"][1] < 0]
    where = f"{n_seeds} seeds, pointwise 95% t-intervals of the paired gap"
    if above and below:
        return (
            f"{method} and {reference} cross: {method} is above at in-domain {_ranges(above)} and below at "
            f"{_ranges(below)} ({where})."
        )
    for sign, hits, word in ((1, above, "above"), (-1, below, "below")):
        if not hits:
            continue
        gaps = [lv["mean"] for lv in levels if lv["level"] in hits]
        size = _points(min(gaps), max(gaps))
        if len(hits) == len(levels):
            verb = "dominates" if sign > 0 else "is dominated by"
            return f"{method} {verb} {reference} over {span}: its frontier is {word} at every level, by {size} out-of-domain ({where})."
        rest = [lv["level"] for lv in levels if lv["level"] not in hits]
        return (
            f"{method} is {word} {reference} at in-domain {_ranges(hits)} (by {size} out-of-domain) and equal "
            f"within noise at {_ranges(rest)} ({where}); not a dominance."
        )
    return (
        f"{method} and {reference} are equal within noise over {span}: every interval of the paired gap contains 0 "
        f"(means {_points(min(means), max(means))}; {where})."
    )


def _paired(runs: list[dict[str, Any]], a: str, b: str, key: str) -> dict[str, Any]:
    """Estimate of (final `key` of setting a) - (of setting b), paired by seed."""
    finals = {(r["name"], r["seed"]): final_metrics(r)[key] for r in runs if r["name"] in (a, b)}
    seeds = sorted({s for n, s in finals if n == a} & {s for n, s in finals if n == b})
    gaps = [
        finals[(a, s)] - finals[(b, s)]
        for s in seeds
        if finals[(a, s)] is not None and finals[(b, s)] is not None
    ]
    return estimate(gaps)


def matched_nll(
    runs: list[dict[str, Any]], groups: list[dict[str, Any]], reference: str
) -> list[dict[str, Any]]:
    """For each setting of another method: the `reference` setting with the closest mean final training NLL,
    and the paired accuracy gaps there (the matched-progress view: does it keep more at the same fit?)."""
    refs = [g for g in groups if g["method"] == reference and g["metrics"]["nll"]["mean"] is not None]
    out = []
    for g in groups:
        nll = g["metrics"]["nll"]
        if g["method"] == reference or nll["mean"] is None or not refs:
            continue
        match = min(refs, key=lambda r: abs(r["metrics"]["nll"]["mean"] - nll["mean"]))
        a, b = nll["ci95"], match["metrics"]["nll"]["ci95"]
        out.append(
            {
                "setting": g["name"],
                "reference_setting": match["name"],
                "nll": nll,
                "reference_nll": match["metrics"]["nll"],
                "nll_intervals_overlap": None if a is None or b is None else a[0] <= b[1] and b[0] <= a[1],
                "gap": {
                    key: _paired(runs, g["name"], match["name"], key)
                    for key in ("in_domain", "out_of_domain")
                },
            }
        )
    return out


def equal_settings_gaps(
    runs: list[dict[str, Any]], groups: list[dict[str, Any]], reference: str
) -> list[dict[str, Any]]:
    """Each setting against the `reference` method's setting with the same sweep values (same learning rate,
    same everything the sweep varies): paired final-accuracy gaps at equal hyperparameters."""
    out = []
    for g in groups:
        if g["method"] == reference:
            continue
        point = g.get("point") or {}
        twin = next((r for r in groups if r["method"] == reference and (r.get("point") or {}) == point), None)
        if twin is None:
            continue
        out.append(
            {
                "setting": g["name"],
                "reference_setting": twin["name"],
                "gap": {
                    key: _paired(runs, g["name"], twin["name"], key)
                    for key in ("in_domain", "out_of_domain", "nll")
                },
            }
        )
    return out


def summarize(runs: list[dict[str, Any]], reference: str | None = None) -> dict[str, Any]:
    """Everything the report states, from the finished runs (any subset of the planned ones)."""
    if not runs:
        return {"groups": [], "frontiers": {}, "frontier_gaps": [], "matched_nll": [], "equal_settings": []}
    methods = list(dict.fromkeys(r["method"] for r in runs))
    reference = reference if reference in methods else methods[0]
    groups = group_settings(runs)
    return {
        "reference": reference,
        "groups": groups,
        "frontiers": method_frontiers(runs),
        "frontier_gaps": [paired_frontier_gap(runs, m, reference) for m in methods if m != reference],
        "matched_nll": matched_nll(runs, groups, reference),
        "equal_settings": equal_settings_gaps(runs, groups, reference),
    }
