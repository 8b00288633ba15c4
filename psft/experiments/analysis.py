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
from psft.experiments.estimates import (
    ACCURACY_MARGIN,
    BOOT_SEED,
    DRIFT_MARGIN,
    ENTROPY_MARGIN,
    REPS,
    _levels,
    _ranges,
    group_settings,
)
from psft.experiments.inference import (
    _bootstrap,
    _Data,
    _final,
    _nanmean,
    _reach,
    _seeds,
    _setting_runs,
    _test,
    drift_gaps,
    entropy_equal_step,
    equal_settings,
    frontier_gaps,
    frontier_value,
    matched_nll,
    matched_value,
    pair_mean,
    pairs_of,
)

# --- per-run arrays ---------------------------------------------------------------------------------------


# --- what the report states ----------------------------------------------------------------------------


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


def task_estimates(data: _Data, groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Final accuracy on each evaluation set apart, per setting, with the same bootstrap over seeds and prompts
    as the group accuracies (which average the sets): an average can hide one skill lost behind another kept
    (instruction following behind everyday knowledge). `base`: the base model's accuracy on each set at step 0
    (every run evaluates the same base there; the first such run's, interval over prompts)."""
    keys = ("mean", "se", "ci95")
    settings = {}
    for g in groups:
        settings[g["name"]] = {}
        for task in data.tasks:
            est = _bootstrap(data, g["seeds"], lambda s, pt, t=task, n=g["name"]: _final(
                data, _setting_runs(data, n, s), f"task:{t}", pt))  # fmt: skip
            settings[g["name"]][task] = {"n": len(g["seeds"]), **{k: est.get(k) for k in keys}}
    base = {}
    first = next((r for r in data.runs.values() if (r.get("evals") or [{}])[0].get("step") == 0), None)
    if first is not None:
        for task in data.tasks:
            est = _bootstrap(
                data, [first["seed"]], lambda s, pt, t=task: data.path(first["id"], f"task:{t}", pt)[:, 0]
            )
            base[task] = {k: est.get(k) for k in keys}
    return {"tasks": dict(data.tasks), "base": base, "settings": settings}


CLAIMS = (
    ("frontier", "{m} keeps more out-of-domain accuracy than {r} at matched in-domain accuracy"),
    ("matched_nll", "{m} keeps more out-of-domain accuracy than {r} at matched held-out NLL"),
    ("entropy_step", "{m}'s entropy stays higher than {r}'s at equal step"),
    ("entropy_nll", "{m}'s entropy is higher than {r}'s at matched held-out NLL"),
)


def _over_targets(targets: list[float]) -> str:
    if not targets:
        return "no held-out NLL target (see Matched held-out NLL)"
    return f"mean over {len(targets)} held-out NLL targets"


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
        pairs = pairs_of(data, equal, method)

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
            return pair_mean(data, pairs, s, pt, entropy_equal_step)

        effects = {
            "frontier": (frontier_effect, ACCURACY_MARGIN, "points", 100,
                         f"mean over in-domain levels {_ranges(levels) or '-'}"),
            "matched_nll": (nll_effect, ACCURACY_MARGIN, "points", 100, _over_targets(targets)),
            "entropy_step": (entropy_effect, ENTROPY_MARGIN, "nats", 1,
                             f"mean over {len(pairs)} equal-learning-rate pair(s) and every logged step"),
            "entropy_nll": (lambda s, pt: nll_effect(s, pt, "entropy"), ENTROPY_MARGIN, "nats", 1,
                            _over_targets(targets)),
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
    empty = {"groups": [], "per_task": {"tasks": {}, "base": {}, "settings": {}}, "frontiers": {},
             "frontier_gaps": [], "matched_nll": [], "equal_settings": [], "drift": [], "claims": []}  # fmt: skip
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
            "drift_margin": DRIFT_MARGIN,
        },
        "groups": groups,
        "per_task": task_estimates(data, groups),
        "frontiers": method_frontiers(data),
        "frontier_gaps": frontier,
        "matched_nll": matched,
        "equal_settings": equal,
        "drift": drift_gaps(data, equal, others, reference),
        "claims": claims(data, others, reference, frontier, matched, equal),
    }
