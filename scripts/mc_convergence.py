"""How fast do Monte-Carlo kernels converge? The relative Frobenius error of the Monte-Carlo NTK
and NNGP against the closed-form Θ_∞ and NNGP_∞, for S = 4 … 1024 networks, on a network whose
E[Θ_0] is exactly Θ_∞ (one hidden layer, so only sampling error is left), over several
independent ensembles; the fitted slope of ln error against ln S (theory: −1/2).

Writes docs/figures/monte_carlo_convergence.png and prints the table.

    python scripts/mc_convergence.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ntk_lab.kernels import infinite_width_kernels, monte_carlo_kernels
from ntk_lab.models import MLP

COUNTS = [4, 16, 64, 256, 1024]
ENSEMBLES = 3
WIDTH = 256
OUT = Path(__file__).resolve().parent.parent / "docs" / "figures" / "monte_carlo_convergence.png"


def main() -> None:
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nngp_inf, ntk_inf = infinite_width_kernels(x, activation="erf", depth=1, w_std=1.3, b_std=0.2)
    errors = {"ntk": [], "nngp": []}
    for ensemble in range(ENSEMBLES):
        mc = monte_carlo_kernels(
            lambda s: MLP(4, WIDTH, 1, activation="erf", w_std=1.3, b_std=0.2, seed=s,
                          dtype=torch.float64),
            x, n_samples=COUNTS, seed=10_000 * ensemble)
        for key, exact in (("ntk", ntk_inf), ("nngp", nngp_inf)):
            errors[key].append([((mc[key][i] - exact).norm() / exact.norm()).item()
                                for i in range(len(COUNTS))])
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    print(f"{'S':>6s} " + " ".join(f"{k + ' error':>14s}" for k in errors))
    mean = {k: np.mean(v, axis=0) for k, v in errors.items()}
    for i, count in enumerate(COUNTS):
        print(f"{count:6d} " + " ".join(f"{mean[k][i]:14.3e}" for k in errors))
    for key, marker in (("ntk", "o"), ("nngp", "s")):
        slope = np.polyfit(np.log(COUNTS), np.log(mean[key]), 1)[0]
        print(f"{key}: error ∝ S^{slope:.2f} (theory −0.5)")
        for run in errors[key]:
            ax.plot(COUNTS, run, marker, color="C0" if key == "ntk" else "C1", alpha=0.3, ms=4)
        ax.plot(COUNTS, mean[key], marker + "-", color="C0" if key == "ntk" else "C1",
                label=f"{key}: slope {slope:.2f}")
    reference = mean["ntk"][0] * (np.array(COUNTS) / COUNTS[0]) ** -0.5
    ax.plot(COUNTS, reference, "k--", lw=1, label="S^(−1/2)")
    ax.set(xscale="log", yscale="log", xlabel="networks averaged S",
           ylabel="‖K_MC − K_∞‖_F / ‖K_∞‖_F",
           title=f"Monte-Carlo kernels, erf MLP, width {WIDTH}, 1 hidden layer")
    ax.legend(fontsize=8)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
