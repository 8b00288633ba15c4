"""psft.experiments.stats on synthetic data with known answers: bootstrap coverage, Holm, TOST, interpolation."""

import math

import numpy as np
import pytest

from psft.experiments import stats


def _crossed(rng, delta, seeds=5, prompts=100, sd_seed=0.03, sd_prompt=0.3, sd_noise=0.3):
    """Paired differences (seeds, prompts) with a seed effect, a prompt effect shared by every seed (the same
    prompts score every seed) and noise; the true mean difference is `delta`."""
    return (
        delta
        + rng.normal(0, sd_seed, (seeds, 1))
        + rng.normal(0, sd_prompt, (1, prompts))
        + rng.normal(0, sd_noise, (seeds, prompts))
    )


def test_bootstrap_interval_covers_a_known_difference_at_about_its_nominal_rate():
    rng = np.random.default_rng(0)
    delta, trials, covered = 0.05, 300, 0
    for trial in range(trials):
        d = _crossed(rng, delta)
        est = stats.bootstrap_paired_difference(d + 0.5, np.full_like(d, 0.5), reps=400, seed=trial)
        assert est["mean"] == pytest.approx(d.mean())
        low, high = est["ci95"]
        covered += low <= delta <= high
    assert 0.91 <= covered / trials <= 0.99  # nominal 0.95; binomial sd over 300 trials ~0.013


def _coverage(seeds, trials=300, corrected=True, **noise):
    """Share of `trials` simulated crossed data sets whose 95% interval covers the true difference 0.05."""
    rng, covered = np.random.default_rng(0), 0
    for trial in range(trials):
        d = _crossed(rng, 0.05, seeds=seeds, **noise)
        if corrected:
            low, high = stats.bootstrap_paired_difference(
                d + 0.5, np.full_like(d, 0.5), reps=400, seed=trial
            )["ci95"]
        else:  # the plain two-way percentile interval, before the few-seeds correction
            draws, weights = stats.bootstrap_draws(seeds, d.shape[1], 400, np.random.default_rng(trial))
            low, high = stats.summarize_replicates(d.mean(), stats.hierarchical_mean(d, draws, weights))[
                "ci95"
            ]
        covered += low <= 0.05 <= high
    return covered / trials


def test_few_seeds_with_dominant_seed_noise_are_covered_after_the_correction():
    """With 3 seeds and the seed noise dominant, the plain percentile interval covers about 73% (measured: 57% at
    2 seeds, 83% at 5); the unbiased seed variance with Student-t tails on Welch-Satterthwaite df brings it to
    about 94% (91% at 2 seeds, 96% at 5)."""
    seed_dominated = dict(sd_seed=0.1, sd_prompt=0.05, sd_noise=0.05)
    assert _coverage(3, corrected=False, **seed_dominated) < 0.82
    assert _coverage(3, **seed_dominated) >= 0.90
    assert _coverage(3) <= 0.99  # prompt noise dominant: the correction barely widens (measured 97.7%)


def test_seed_correction_of_a_statistic_without_prompt_noise_is_the_one_sample_t_test():
    """Entropy gaps have no prompt noise: two seeds at 0.006 and 0.008 nats give mean 0.007, se 0.001 and t = 7
    on 1 degree of freedom, p = 2 (1/2 - atan(7) / pi) = 0.0903 (a normal approximation would say 2.6e-12)."""
    summary = stats.summarize_replicates(0.007, np.array([0.006, 0.007, 0.007, 0.008] * 50))
    out = stats.seed_corrected(summary, np.array([0.006, 0.008]), np.zeros(200))
    assert out["df"] == pytest.approx(1.0) and out["se"] == pytest.approx(0.001)
    assert out["p"] == pytest.approx(2 * (0.5 - math.atan(7) / math.pi), rel=1e-6)
    half = 12.7062 * 0.001
    assert out["ci95"] == pytest.approx([0.007 - half, 0.007 + half], abs=1e-6)


def test_student_t_against_its_table_and_closed_forms():
    for df, quantile in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert stats.t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-3)
    assert stats.t_cdf(0.5, 1) == pytest.approx(0.5 + math.atan(0.5) / math.pi, rel=1e-12)  # Cauchy
    assert stats.t_cdf(2.0, 3) == pytest.approx(0.930337, abs=1e-6)
    assert stats.t_cdf(-1.0, 2.5) == pytest.approx(1 - stats.t_cdf(1.0, 2.5))
    assert stats.t_cdf(1.96, math.inf) == pytest.approx(0.975, abs=1e-4)
    assert stats.t_cdf(1.96, 1e7) == pytest.approx(stats.normal_cdf(1.96), abs=1e-6)
    assert stats.z_test(2.0, 1.0, df=3) == pytest.approx(2 * (1 - 0.930337), abs=1e-5)


def test_student_t_at_huge_degrees_of_freedom_is_the_normal():
    """Two seeds whose gaps agree up to float rounding (0.41 - 0.45 and 0.44 - 0.48) leave a seed variance of
    ~1e-34 and Welch-Satterthwaite df ~1e30; the t distribution there must be the normal's, not the +/- 5e22
    interval the incomplete beta's lost digits once gave (SmolLM2 study, SFT-KL at 1e-4)."""
    for df in (1e8, 1e12, 1e30, 1e60):
        assert stats.t_quantile(0.975, df) == pytest.approx(1.959964, abs=1e-5)
        assert stats.t_cdf(2.5, df) == pytest.approx(stats.normal_cdf(2.5), abs=1e-9)
    assert stats.t_quantile(0.975, 9e6) == pytest.approx(1.959964, abs=1e-5)  # just below the switch: same
    points = np.array([0.41 - 0.45, 0.44 - 0.48])
    assert 0 < points.var(ddof=1) < 1e-30  # the float rounding that set this off
    replicates = np.random.default_rng(0).normal(-0.04, 0.02, 400)
    out = stats.seed_corrected(stats.summarize_replicates(-0.04, replicates), points, replicates)
    half = 1.959964 * replicates.std(ddof=1)  # the prompt noise alone, normal tails
    assert out["ci95"] == pytest.approx([-0.04 - half, -0.04 + half], abs=2e-3)


def test_nested_prompt_resampling_would_undercover_crossed_data():
    """Why prompts are drawn once per replicate: resampling them within each seed slot misses the shared
    prompt effect (the variance the shared draw keeps)."""
    rng = np.random.default_rng(1)
    d = _crossed(rng, 0.0, sd_seed=0.0, sd_noise=0.0)
    seeds, weights = stats.bootstrap_draws(5, 100, 2000, np.random.default_rng(2))
    shared = stats.hierarchical_mean(d, seeds, weights).std()
    nested_w = np.random.default_rng(3).multinomial(100, np.full(100, 0.01), size=(2000, 5)).astype(float)
    nested = stats.hierarchical_mean(d, seeds, nested_w).std()
    assert shared == pytest.approx(d[0].std() / 10, rel=0.1)  # sd of a mean of 100 prompts
    assert nested == pytest.approx(shared / np.sqrt(5), rel=0.15)


def test_paired_bootstrap_is_paired_by_prompt_and_seed():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 2, (3, 50)).astype(float)
    est = stats.bootstrap_paired_difference(a, a.copy())  # identical scores: zero difference, no spread
    assert est["mean"] == 0 and est["ci95"] == [0.0, 0.0] and est["p"] == 1.0
    shifted = stats.bootstrap_paired_difference(a, a - 0.1)
    assert shifted["mean"] == pytest.approx(0.1) and shifted["ci95"] == pytest.approx([0.1, 0.1])


def test_holm_adjusts_known_p_values():
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, None, 0.6]) == [1.0, None, 1.0]  # None is no test: m = 2
    assert stats.holm([0.3, 0.9]) == pytest.approx([0.6, 0.9])
    assert stats.holm([]) == []


def test_tost_on_clearly_equivalent_and_clearly_different_cases():
    assert stats.tost(0.001, 0.005, margin=0.03) < 1e-6  # tight around 0: equivalent within 3 points
    assert stats.tost(0.05, 0.005, margin=0.03) > 0.99  # clearly outside the margin
    assert stats.tost(0.0, 0.05, margin=0.03) > 0.2  # too noisy to say either way
    # at the margin's edge the p-value is 1/2 whatever the noise
    assert stats.tost(0.03, 0.01, margin=0.03) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        stats.tost(0.0, 0.01, margin=0.0)
    assert stats.verdict(0.05, 0.001) == "above"
    assert stats.verdict(-0.05, 0.001) == "below"
    assert stats.verdict(0.001, 0.6, tost_adjusted=0.001, margin=0.03) == "equivalent within ±3 points"
    assert stats.verdict(0.001, 0.6, tost_adjusted=0.2, margin=0.03) == "not resolved"
    assert stats.z_test(1.96, 1.0) == pytest.approx(0.05, abs=1e-3)


def test_interpolation_is_exact_on_linear_paths_and_takes_the_first_crossing():
    xs, ys = [0.0, 0.2, 0.6, 1.0], [0.9, 0.8, 0.4, 0.0]
    assert stats.interpolate_at(xs, ys, 0.4) == pytest.approx(0.6)
    assert stats.interpolate_at(xs, ys, 0.2) == pytest.approx(0.8)  # exact at an evaluation
    assert stats.interpolate_at(xs, ys, 1.1) is None
    # a loss falling to a target, then rising again: the first crossing counts
    nll, acc = [2.0, 1.0, 0.5, 1.5], [0.0, 0.4, 0.6, 0.3]
    assert stats.interpolate_at(nll, acc, 0.75, decreasing=True) == pytest.approx(0.5)
    assert stats.interpolate_at(nll, acc, 2.5, decreasing=True) == pytest.approx(0.0)
    batch = stats.interpolate_paths(np.array([xs, xs]), np.array([ys, ys[::-1]]), 0.4)
    assert batch == pytest.approx([0.6, 0.6])  # reversed ys: 0.4 -> 0.8 between x 0.2 and 0.6
    assert np.isnan(stats.interpolate_paths(np.array(xs), np.array(ys), 2.0))


def test_upper_frontier_of_an_interpolated_path():
    x = np.array([0.0, 0.5, 0.3, 0.8])
    y = np.array([1.0, 0.6, 0.9, 0.1])
    # level 0.4: vertices with x >= 0.4 give 0.6, 0.1; crossings: 0->0.5 at y 0.68, 0.5->0.3 at 0.75, 0.3->0.8 at 0.74
    assert stats.upper_frontier_at(x, y, 0.4) == pytest.approx(0.75)
    assert np.isnan(stats.upper_frontier_at(x, y, 0.9))
