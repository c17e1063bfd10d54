"""Build one run from a validated :class:`~ntk_lab.config.RunConfig` and execute it.

Resolves the device and dtype, builds the data and the network, computes Θ_∞ and NNGP_∞ on
the probe set once, trains with the recorder writing the run folder, and writes the summary
and the single-run figures. Plain arguments only (no Hydra).
"""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

import ntk_lab
from ntk_lab.config import ConfigError, RunConfig, data_settings
from ntk_lab.data import Dataset, make_dataset
from ntk_lab.kernels.analytic import infinite_width_kernels
from ntk_lab.kernels.regression import GradientFlowPredictor
from ntk_lab.models import MLP, ScaledOutput
from ntk_lab.records import STATUS_FAILED, STATUS_RUNNING, RunRecorder, write_summary
from ntk_lab.train import TrainOutcome, TrainSettings, train

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is invalid: CUDA is not available here; allowed: auto, cpu")
    return torch.device(name)


def versions() -> dict[str, Any]:
    """torch / ntk_lab / Python versions and the git commit of the code, when available."""
    info = {"ntk_lab": ntk_lab.__version__, "torch": torch.__version__,
            "python": platform.python_version()}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def build_model(config: RunConfig, data: Dataset, dtype: torch.dtype, device) -> torch.nn.Module:
    """The MLP of ``config.model`` for ``data``, α-scaled when ``output_scale`` ≠ 1 or centered."""
    m = config.model
    out_dim = data.out_dim if m.out_dim is None else m.out_dim
    if out_dim != data.out_dim:
        raise ConfigError(f"model.out_dim={m.out_dim} is invalid: the {data.name} data has "
                          f"{data.out_dim} target column(s); use null or {data.out_dim}")
    net = MLP(data.in_dim, m.width, m.depth, out_dim, m.activation, m.parameterization,
              m.w_std, m.b_std, seed=config.train.seed, dtype=dtype, device=device)
    if m.output_scale != 1.0 or m.center:
        return ScaledOutput(net, m.output_scale, m.center)
    return net


def probe_kernels(config: RunConfig, data: Dataset) -> dict[str, torch.Tensor]:
    """Probe inputs, NNGP_∞ and Θ_∞ (float64) on them; Θ_∞ scaled by α² like the network."""
    m = config.model
    x = data.x_probe.to(torch.float64)
    nngp, ntk = infinite_width_kernels(
        x, activation=m.activation, depth=m.depth, w_std=m.w_std, b_std=m.b_std,
        parameterization=m.parameterization, width=m.width,
    )
    kernels = {"probe_x": data.x_probe, "nngp_inf": nngp, "theta_inf": ntk * m.output_scale**2}
    if data.probe_angle is not None:
        kernels["probe_angle"] = data.probe_angle
    return kernels


def infinite_width_predictor(config: RunConfig, data: Dataset) -> GradientFlowPredictor:
    """Θ_∞ gradient flow on the train and test sets (float64, on the data's device).

    The dynamics are driven by Θ·loss_scale; for an α-scaled network that is α²Θ_∞/α² = Θ_∞,
    so the unscaled Θ_∞ is used whatever α.
    """
    m = config.model
    n = len(data.x_train)
    x = torch.cat([data.x_train, data.x_test]).to(torch.float64)
    _, ntk = infinite_width_kernels(
        x, x[:n], activation=m.activation, depth=m.depth, w_std=m.w_std, b_std=m.b_std,
        parameterization=m.parameterization, width=m.width)
    return GradientFlowPredictor(ntk[:n], ntk[n:], data.y_train.to(torch.float64))


def _summary(config: RunConfig, status: str, message: str, started: float, **extra) -> dict:
    return {**config.flat(), "status": status, "message": message,
            "wall_time_s": time.time() - started, "versions": versions(), **extra}


def run_experiment(
    config: RunConfig, run_dir: Path, *, stop_requested: Callable[[], bool] = lambda: False,
    started: Optional[float] = None,
) -> TrainOutcome:
    """Train one network as ``config`` says and write its run folder (DESIGN.md §5)."""
    started = time.time() if started is None else started
    run_dir = Path(run_dir)
    device = resolve_device(config.device)
    dtype = DTYPES[config.precision]
    torch.manual_seed(config.train.seed)
    data = make_dataset(config.data.name, **data_settings(config.data))
    model = build_model(config, data, dtype, device)
    static = probe_kernels(config, data)
    data = data.to(dtype, device)
    config.model.out_dim = data.out_dim
    config.device = str(device)
    write_summary(run_dir, _summary(config, STATUS_RUNNING, "", started))

    recorder = RunRecorder(run_dir, static)
    settings = TrainSettings(
        steps=config.train.steps, lr=config.train.lr, batch_size=config.train.batch_size,
        checkpoints=config.ntk.checkpoints, ntk_method=config.ntk.method,
        memory_budget_bytes=config.ntk.memory_budget_mb << 20, seed=config.train.seed,
        record_jac_change=config.ntk.jac_change, progress=config.progress,
        track_linearized=config.lazy.linearized, kappa_hessian=config.lazy.kappa_hessian,
        hessian_points=config.lazy.hessian_points, hessian_iters=config.lazy.hessian_iters,
    )
    theta_inf = static["theta_inf"].to(device)
    infinite = infinite_width_predictor(config, data) if config.lazy.infinite_width else None
    outcome = train(model, data, settings, recorder, theta_inf=theta_inf,
                    loss_scale=1.0 / config.model.output_scale**2, infinite=infinite,
                    stop_requested=stop_requested)
    final = outcome.rows[-1] if outcome.rows else {}
    recorder.finish(_summary(config, outcome.status, outcome.message, started,
                             diverged_step=outcome.diverged_step, last_step=outcome.last_step,
                             final=final))
    _draw_run_figures(run_dir)
    return outcome


def _draw_run_figures(run_dir: Path) -> None:
    from ntk_lab.analysis.run_figures import draw_run_figures

    draw_run_figures(run_dir)


def record_failure(config: RunConfig, run_dir: Path, message: str, started: float) -> None:
    """Mark a run that raised as ``failed`` (its metrics.csv keeps the rows it reached)."""
    write_summary(run_dir, _summary(config, STATUS_FAILED, message, started))
