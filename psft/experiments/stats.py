"""Small statistics for comparing training runs scored on the same prompts: a hierarchical bootstrap over seeds
and prompts corrected for few seeds (Student-t p-values on Welch-Satterthwaite degrees of freedom), Holm's
step-down adjustment, two one-sided tests (TOST) for equivalence within a margin, and linear interpolation of an
evaluation path at a target level.

Why these: a run's accuracy has two sources of noise, the seed (data order, initialisation: the run itself)
and the finite set of evaluation prompts (a binomial error of sqrt(p(1-p)/n) per run). Resampling seeds, then
prompts within each drawn seed, and applying the same draws to every method, keeps the pairing by prompt and
seed that makes differences between methods much tighter than either method alone. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ALPHA = 0.05


def bootstrap_draws(
    n_seeds: int, n_prompts: int, reps: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Index draws of a two-level bootstrap over seeds and prompts: `seeds` (reps, n_seeds), which seed fills
    each slot of a replicate (drawn with replacement), and `weights` (reps, n_seeds, n_prompts), how often
    each prompt is drawn (a multinomial count: prompts resampled with replacement). Every seed is scored on
    the same prompts, so seeds and prompts are crossed, not nested: one prompt draw per replicate is shared by
    all its seed slots (Owen's two-way "pigeonhole" bootstrap). Drawing prompts anew within each seed slot
    (the nested scheme) would divide the variance of a prompt's own effect, shared by every seed, by the number
    of seeds; on simulated crossed data it covered 81-87% instead of 95% (tests/test_stats.py). With one seed
    the seed level is fixed and only prompts are resampled."""
    if n_seeds > 1:
        seeds = rng.integers(0, n_seeds, size=(reps, n_seeds))
    else:
        seeds = np.zeros((reps, n_seeds), dtype=np.int64)
    if n_prompts > 0:
        weights = rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=(reps, 1))
    else:
        weights = np.zeros((reps, 1, 0))
    return seeds, np.repeat(weights.astype(np.float64), n_seeds, axis=1)


def hierarchical_mean(values: np.ndarray, seeds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bootstrap replicates of the grand mean of `values` (n_seeds, n_prompts): for each replicate, the mean
    over its seed slots of the weighted prompt mean of the drawn seed. Returns (reps,)."""
    n_prompts = values.shape[1]
    per_slot = np.einsum("rsp,rsp->rs", values[seeds], weights) / n_prompts
    return per_slot.mean(axis=1)


def summarize_replicates(
    estimate: float, replicates: np.ndarray, alpha: float = ALPHA
) -> dict[str, float | list[float] | int | None]:
    """`{"mean", "se", "ci95", "p", "reps"}` from a point estimate and its bootstrap replicates (NaN replicates,
    where the statistic was undefined, are dropped): the percentile interval at level 1 - alpha, the
    bootstrap standard error and the two-sided p-value of "the quantity is 0" from the normal approximation
    z = estimate / se (continuous, so that Holm over many tests is not limited by the number of replicates).
    For a mean over few seeds, `seed_corrected` then widens it."""
    reps = replicates[np.isfinite(replicates)]
    if not np.isfinite(estimate) or len(reps) < 2:
        return {"mean": None if not np.isfinite(estimate) else float(estimate), "se": None, "ci95": None,
                "p": None, "reps": int(len(reps))}  # fmt: skip
    se = float(reps.std(ddof=1))
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return {
        "mean": float(estimate),
        "se": se,
        "ci95": [float(low), float(high)],
        "p": z_test(float(estimate), se),
        "reps": int(len(reps)),
    }


def normal_cdf(x: float) -> float:
    """Standard normal distribution function."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


LARGE_DF = 1e7  # degrees of freedom past which Student's t is taken as the normal


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, modified Lentz)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast below its mean: use the symmetry
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = (
        math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
        / a
    )
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c if abs(c) > tiny else 1.0 + num / tiny
        f *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * (f - 1.0)


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function with `df` > 0 degrees of freedom (any real df; inf: the normal). Past
    1e7 degrees of freedom it is the normal's (within 1e-7): there df / (df + t^2) rounds to 1 and the incomplete
    beta's log-gammas lose every digit, which once made a 95% interval of +/- 5e22."""
    if not math.isfinite(df) or df > LARGE_DF:
        return normal_cdf(t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with `df` degrees of freedom (bisection on `t_cdf`)."""
    if not 0.0 < q < 1.0 or df <= 0:
        raise ValueError(f"need 0 < q < 1 and df > 0, got q={q}, df={df}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if t_cdf(mid, df) < q else (low, mid)
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def z_test(estimate: float, se: float, df: float = math.inf) -> float:
    """Two-sided p-value of "the true value is 0" for an estimate with standard error `se`: Student's t with
    `df` degrees of freedom (the default, inf: the normal)."""
    if se <= 0:
        return 0.0 if estimate != 0 else 1.0
    return 2.0 * (1.0 - t_cdf(abs(estimate) / se, df))


def seed_corrected(
    summary: dict[str, Any], seed_points: np.ndarray, prompt_replicates: np.ndarray, alpha: float = ALPHA
) -> dict[str, Any]:
    """`summary` (of `summarize_replicates`, for a mean over seeds) with its standard error, p-value and interval
    made honest for few seeds. A bootstrap over S seeds sees (S-1)/S of the seed variance and gives normal tails
    where a mean of S values has Student-t ones: with the seed noise dominant, its 95% interval covers about 57%
    at 2 seeds, 73% at 3 and 83% at 5 (tests/test_stats.py). Here the variance is the seed part, var(seed_points,
    ddof=1) / S (each seed's own point estimate), plus the prompt part, the variance of `prompt_replicates` (every
    seed kept once, prompts redrawn; 0 for statistics without prompt noise), with Welch-Satterthwaite degrees of
    freedom (S - 1 for the seed part, the prompt part taken as known); the p-value is Student's t on them and the
    interval is widened, never narrowed, to at least estimate +/- t(1 - alpha/2, df) se. Adds `df`."""
    points = np.asarray(seed_points, dtype=float)
    n = len(points)
    if summary.get("se") is None or n < 2 or not np.isfinite(points).all():
        return summary
    prompts = np.asarray(prompt_replicates, dtype=float)
    prompts = prompts[np.isfinite(prompts)]
    v_seed = float(points.var(ddof=1)) / n
    v_prompt = float(prompts.var(ddof=1)) if len(prompts) > 1 else 0.0
    variance = v_seed + v_prompt
    df = math.inf if v_seed <= 0 else variance**2 / (v_seed**2 / (n - 1))
    se = math.sqrt(variance)
    if se <= summary["se"] and math.isinf(df):
        return {**summary, "df": df}
    se = max(se, summary["se"])
    estimate, (low, high) = summary["mean"], summary["ci95"]
    half = t_quantile(1 - alpha / 2, df) * se
    return {**summary, "se": se, "df": df, "p": z_test(estimate, se, df),
            "ci95": [min(low, estimate - half), max(high, estimate + half)]}  # fmt: skip


def bootstrap_paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    reps: int = 2000,
    seed: int = 0,
    alpha: float = ALPHA,
) -> dict[str, float | list[float] | int | None]:
    """Mean of `a - b` with a hierarchical bootstrap interval. `a` and `b` are (n_seeds, n_prompts) scores of
    two methods on the same prompts with the same seeds (row i of both: seed i; column j: prompt j), so every
    replicate draws the same seeds and prompts for both (paired by prompt and seed)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (seeds, prompts) arrays of one shape, got {a.shape} and {b.shape}")
    seeds, weights = bootstrap_draws(a.shape[0], a.shape[1], reps, np.random.default_rng(seed))
    diff = a - b
    summary = summarize_replicates(float(diff.mean()), hierarchical_mean(diff, seeds, weights), alpha)
    prompt_only = (weights[:, 0, :] @ diff.T).mean(axis=1) / diff.shape[1]  # every seed once, prompts redrawn
    return seed_corrected(summary, diff.mean(axis=1), prompt_only, alpha)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error control for any dependence between the tests):
    the i-th smallest of m p-values is multiplied by m - i + 1, then made non-decreasing, capped at 1.
    Rejecting where the adjusted p-value is < alpha keeps P(any false rejection) <= alpha. None stays None
    and does not count as a test."""
    index = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(index, key=lambda i: pvalues[i])
    m = len(order)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def tost(estimate: float, se: float, margin: float, df: float = math.inf) -> float:
    """p-value of two one-sided tests for equivalence: H0 "|true value| >= margin" against "|true value| <
    margin", Student's t with `df` degrees of freedom (inf: normal). Equivalence within +/- margin is shown at
    level alpha when p < alpha, which is the same as the (1 - 2 alpha) interval estimate +/- t(1-alpha) se lying
    inside (-margin, margin)."""
    if margin <= 0:
        raise ValueError("the equivalence margin must be > 0")
    if se <= 0:
        return 0.0 if abs(estimate) < margin else 1.0
    p_low = 1.0 - t_cdf((estimate + margin) / se, df)  # H0: value <= -margin
    p_high = t_cdf((estimate - margin) / se, df)  # H0: value >= +margin
    return max(p_low, p_high)


def verdict(
    estimate: float | None,
    p_adjusted: float | None,
    tost_adjusted: float | None = None,
    margin: float | None = None,
    alpha: float = ALPHA,
    unit: str = "points",
    scale: float = 100,
) -> str:
    """ "above" / "below" when the adjusted test of "no difference" rejects; "equivalent within +/-m <unit>" when
    the adjusted TOST rejects "a difference of at least m"; otherwise "not resolved" (the data do not decide)."""
    if estimate is None or p_adjusted is None:
        return "not resolved"
    if p_adjusted < alpha:
        return "above" if estimate > 0 else "below"
    if tost_adjusted is not None and margin is not None and tost_adjusted < alpha:
        return f"equivalent within ±{scale * margin:g} {unit}"
    return "not resolved"


def interpolate_at(
    xs: Sequence[float], ys: Sequence[float], target: float, decreasing: bool = False
) -> float | None:
    """`y` where the path (xs[i], ys[i]), in evaluation order, first reaches `x = target`: linear between the
    two evaluations around the first crossing (exact at an evaluation that hits it). `decreasing`: reaching
    means falling to `target` (a loss), otherwise rising to it (an accuracy). None if never reached."""
    sign = -1.0 if decreasing else 1.0
    prev_x = prev_y = None
    for x, y in zip(xs, ys, strict=True):
        if x is None or y is None:
            continue
        if sign * (x - target) >= 0:
            if prev_x is None or x == prev_x:
                return float(y)
            t = (target - prev_x) / (x - prev_x)
            return float(prev_y + t * (y - prev_y))
        prev_x, prev_y = x, y
    return None


def interpolate_paths(x: np.ndarray, y: np.ndarray, target: float, decreasing: bool = False) -> np.ndarray:
    """Vectorised `interpolate_at` over leading axes: `x`, `y` (..., n_evals) -> (...,), NaN where never
    reached."""
    s = -1.0 if decreasing else 1.0
    reached = s * (x - target) >= 0
    any_reached = reached.any(axis=-1)
    first = np.argmax(reached, axis=-1)
    prev = np.maximum(first - 1, 0)
    take = lambda a, i: np.take_along_axis(a, i[..., None], axis=-1)[..., 0]  # noqa: E731
    x1, y1, x0, y0 = take(x, first), take(y, first), take(x, prev), take(y, prev)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where((first > 0) & (x1 != x0), (target - x0) / (x1 - x0), 1.0)
    out = y0 + t * (y1 - y0)
    return np.where(any_reached, out, np.nan)


def upper_frontier_at(x: np.ndarray, y: np.ndarray, level: float) -> np.ndarray:
    """Best `y` on a piecewise-linear path (..., n_evals) at `x >= level`: the max over the evaluations with
    x >= level and over every point where a segment crosses `level` (y interpolated there), NaN if the path
    never reaches `level`. The maximum of a linear segment's y over its part with x >= level lies at one of
    those points, so this is exact for the interpolated path."""
    vertex = np.where(x >= level, y, -np.inf)
    x0, x1, y0, y1 = x[..., :-1], x[..., 1:], y[..., :-1], y[..., 1:]
    crosses = (x0 - level) * (x1 - level) < 0
    with np.errstate(invalid="ignore", divide="ignore"):
        yc = y0 + (level - x0) / (x1 - x0) * (y1 - y0)
    cross = np.where(crosses, yc, -np.inf)
    best = np.maximum(vertex.max(axis=-1), cross.max(axis=-1, initial=-np.inf))
    return np.where(np.isfinite(best), best, np.nan)


def replicate_statistic(
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_seeds: int,
    n_prompts: int,
    reps: int,
    seed: int = 0,
) -> np.ndarray:
    """Replicates of any statistic of (seed draws, prompt weights), for statistics that are not plain means
    (frontiers, interpolated paths): `statistic(seeds, weights)` gets the whole batch of draws (see
    `bootstrap_draws`) and returns (reps,). Replicate 0 is not special; the point estimate is computed by the
    caller on the data themselves."""
    seeds, weights = bootstrap_draws(n_seeds, n_prompts, reps, np.random.default_rng(seed))
    return statistic(seeds, weights)
