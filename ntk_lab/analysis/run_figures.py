"""Single-run figures, drawn into ``<run_dir>/plots/`` from the run folder (via records).

- ``loss_kappa.png``: train / test loss and κ, kernel distance, ntk_err_inf against step.
- ``ntk_circle.png`` (circle data): Θ(x₀, x(γ)) against γ at initialization and at the end of
  training, Θ_∞ drawn over them — Jacot et al. 2018, Figure 1, for one network.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ntk_lab.records import PLOTS_DIR, load_kernels, read_run  # noqa: E402


def _positive(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return np.where(v > 0, v, np.nan)


def draw_loss_kappa(run_dir: Path, out: Path) -> None:
    record = read_run(run_dir)
    frame = record.metrics
    if frame is None or frame.empty:
        return
    steps = frame["step"].to_numpy()
    fig, (ax_loss, ax_k) = plt.subplots(1, 2, figsize=(10, 4))
    for col in ("train_loss", "test_loss"):
        if col in frame:
            ax_loss.plot(steps, _positive(frame[col]), marker="o", ms=3, label=col)
    ax_loss.set(xscale="symlog", yscale="log", xlabel="step", ylabel="MSE loss  ½‖f−y‖²/N",
                title="loss")
    ax_loss.legend()
    for col, label in (("kappa", "κ = ‖Θ_t−Θ_0‖/‖Θ_0‖"), ("kernel_distance", "kernel distance"),
                       ("ntk_err_inf", "‖Θ_t−Θ_∞‖/‖Θ_∞‖"), ("jac_change", "‖J_t−J_0‖/‖J_0‖"),
                       ("param_change", "‖θ_t−θ_0‖/‖θ_0‖")):
        if col in frame and np.isfinite(_positive(frame[col])).any():
            ax_k.plot(steps, _positive(frame[col]), marker="o", ms=3, label=label)
    ax_k.set(xscale="symlog", yscale="log", xlabel="step", ylabel="relative change (1)",
             title="drift")
    ax_k.legend(fontsize=8)
    s = record.summary
    fig.suptitle(f"width {s.get('width')}, depth {s.get('depth')}, lr {s.get('lr')}, "
                 f"{s.get('parameterization')}, {s.get('activation')} — {s.get('status')}")
    fig.tight_layout()
    fig.savefig(out / "loss_kappa.png", dpi=110)
    plt.close(fig)


def draw_ntk_circle(run_dir: Path, out: Path) -> None:
    try:
        kernels = load_kernels(run_dir)
    except (OSError, RuntimeError):
        return
    if "probe_angle" not in kernels or "theta" not in kernels:
        return
    angle = kernels["probe_angle"].numpy()
    gamma = np.where(angle > math.pi, angle - 2 * math.pi, angle)
    order = np.argsort(gamma)
    # the first probe point's row at the first and last stored steps (not all K·N² entries)
    first, last = (kernels["theta"][k, 0].double().numpy() for k in (0, -1))
    steps = kernels["steps"].numpy()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(gamma[order], first[order], label="Θ at init (t = 0)")
    ax.plot(gamma[order], last[order], label=f"Θ after training (step {steps[-1]})")
    if "theta_inf" in kernels:
        ax.plot(gamma[order], kernels["theta_inf"].numpy()[0, order], "k--", label="Θ_∞")
    s = read_run(run_dir).summary
    ax.set(xlabel="γ (rad), x(γ) = (cos γ, sin γ)", ylabel="Θ(x₀, x(γ))",
           title=f"NTK on the circle, width {s.get('width')} (Jacot et al. 2018, Fig. 1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ntk_circle.png", dpi=110)
    plt.close(fig)


def draw_run_figures(run_dir: Path) -> Path:
    """Draw every single-run figure the folder supports; returns the plots folder."""
    out = Path(run_dir) / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    draw_loss_kappa(Path(run_dir), out)
    draw_ntk_circle(Path(run_dir), out)
    return out
