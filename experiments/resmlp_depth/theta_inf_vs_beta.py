"""Θ_∞ of the plain and the residual MLP of resmlp_depth on its 64 training inputs, for the
branch scales β = 1, 0.25 (the preset's) and 1/√depth: why the preset uses β = 0.25.

For each net and depth: λ_max(Θ_∞)/N (full-batch GD on L = 1/(2N)·Σ(f − y)² is stable while
lr·λ_max/N < 2), the condition number λ_max/λ_min, and the mean and smallest off-diagonal
correlation Θ(x, x')/√(Θ(x, x)Θ(x', x')) (→ 1 when a deep kernel forgets its inputs).

Run: python experiments/resmlp_depth/theta_inf_vs_beta.py   (float64, a few seconds)
"""

import math

import torch

from ntk_lab.data import make_dataset
from ntk_lab.kernels.analytic import infinite_width_kernels
from ntk_lab.models import MLP, ResMLP

W_STD, B_STD, LR = math.sqrt(2.0), 0.1, 0.1  # configs/experiment/resmlp_depth.yaml
DEPTHS = (4, 8, 16, 32)
WIDTH = 64  # Θ_∞ does not depend on it; the modules only carry the layer maps


def kernel_stats(ntk: torch.Tensor) -> tuple[float, float, float, float]:
    eig = torch.linalg.eigvalsh(ntk)
    diag = ntk.diagonal()
    corr = ntk / torch.sqrt(diag[:, None] * diag[None, :])
    off = corr[~torch.eye(len(ntk), dtype=torch.bool)]
    return (eig[-1] / len(ntk)).item(), (eig[-1] / eig[0]).item(), off.mean().item(), off.min().item()


def main() -> None:
    data = make_dataset("sphere_teacher", n_train=64, n_test=256, n_probe=32, in_dim=8, noise=0.0, seed=0)
    x = data.x_train.double()
    print(f"| net | β | depth | λ_max/N | lr·λ_max/N (lr {LR}) | λ_max/λ_min | mean corr | min corr |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for depth in DEPTHS:
        nets = [("mlp", "—", MLP(8, WIDTH, depth, 1,out_dim= "ractivation=elu", "nparameterization=tk", W_w_std=STD, B_b_std=STD, dtype=torch.float64))]
        for name, beta in (("1", 1.0), ("0.25", 0.25), ("1/√depth", 1 / math.sqrt(depth))):
            nets.append(("resmlp", name, ResMLP(8, WIDTH, depth, out_dim=1, activation="relu", parameterization="ntk", w_std=W_STD, b_std=B_STD, branch_scale=beta,
                                                dtype=torch.float64)))
        for net, beta, model in nets:
            _, ntk = infinite_width_kernels(x, model=model)
            lam, cond, mean_corr, min_corr = kernel_stats(ntk)
            print(f"| {net} | {beta} | {depth} | {lam:.3g} | {LR * lam:.3g} | {cond:.3g} | "
                  f"{mean_corr:.3f} | {min_corr:.3f} |")


if __name__ == "__main__":
    main()
