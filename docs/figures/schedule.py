"""Draw docs/figures/schedule.png (the Concepts page's figure): the rollout schedule and the clipped objective.

    python docs/figures/schedule.py

Left: with K = 4, the old policy is the model at the start of each rollout; mini-batch 1 of a rollout has ratio
exactly 1, later ones see the drift of the steps before them. Right: PSFT's per-token surrogate with advantage +1,
min(r, clip(r, 1 - epsilon, 1 + epsilon_high)): above 1 + epsilon_high it is flat, so that token gets no gradient.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

K, ROLLOUTS, EPS, EPS_HIGH = 4, 3, 0.2, 0.28

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.5, 1]})
for r in range(ROLLOUTS):
    for k in range(K):
        step = r * K + k
        left.add_patch(plt.Rectangle((step, 0), 0.9, 1, color=f"C{r}", alpha=0.35 + 0.15 * (k == 0)))
        left.text(step + 0.45, 0.5, f"{k + 1}", ha="center", va="center", fontsize=9)
    left.annotate(
        f"rollout {r + 1}: old policy = model\nhere; old log-probs of\nits {K} mini-batches (r = 1 on 1)",
        xy=(r * K, 1.0), xytext=(r * K + 0.1, 1.35), fontsize=7.5, arrowprops={"arrowstyle": "->"},
    )  # fmt: skip
left.set_xlim(-0.2, ROLLOUTS * K + 0.2)
left.set_ylim(0, 2.3)
left.set_yticks([])
left.set_xlabel("optimizer step (one mini-batch each)")
left.set_title(f"The schedule: K = mini_batches_per_rollout = {K}")

ratio = np.linspace(0.5, 1.8, 400)
surrogate = np.minimum(ratio, np.clip(ratio, 1 - EPS, 1 + EPS_HIGH))
right.plot(ratio, ratio, "--", color="grey", label="SFT as policy gradient: r (advantage +1)")
right.plot(ratio, surrogate, color="C3", lw=2, label="PSFT: min(r, clip(r, 1-ε, 1+ε_high))")
right.axvline(1 + EPS_HIGH, color="C3", ls=":", lw=1)
right.text(1 + EPS_HIGH + 0.02, 0.6, "1 + ε_high: no gradient\nfor tokens past it", fontsize=8)
right.set_xlabel("r = π(token) / π_old(token)")
right.set_ylabel("per-token objective (maximised)")
right.set_title("The objective")
right.legend(fontsize=8, loc="upper left")
fig.tight_layout()
out = Path(__file__).with_suffix(".png")
fig.savefig(out, dpi=110)
print(out)
