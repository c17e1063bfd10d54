"""Finite-width fluctuations of the NTK at initialization (Hanin & Nica 2019).

For a ReLU network of depth L (hidden layers) and width n with He-equivalent initialization
(σ_w = √2, σ_b = 0), Hanin & Nica ("Finite depth and width corrections to the neural tangent
kernel", ICLR 2020, Thm. 1) show that the NTK diagonal Θ(x, x) at initialization has

    E[Θ(x,x)²] / E[Θ(x,x)]² ≃ exp(5β),   β = L/n,

up to constants and corrections in 1/n: the fluctuations are governed by depth over width,
not by width alone. This module measures that moment ratio over many seeds on a (width,
depth) grid and fits the rate of log(ratio) in β.

Per seed s the network is exactly ``MLP(..., seed=s)``; the seeds of a chunk are drawn into
stacked parameter tensors (S, out, in) and Θ(x, x) of all S networks is computed by one
batched forward and one batched backward pass (the per-layer factorization of
:mod:`ntk_lab.kernels.structured`, vectorized over seeds) — no kernel matrix, no per-seed
Python loop over layers.

    python -m ntk_lab.fluctuations                     # the depth_over_width preset
    python -m ntk_lab.fluctuations fluctuations.widths=[16,32] fluctuations.n_seeds=500
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ntk_lab.models import MLP
from ntk_lab.kernels.analytic import infinite_width_kernels
from ntk_lab.kernels.finite_width_ntk import ntk_finite_width_variance
from ntk_lab.analysis.fluctuation_plots import plot_moment_ratio_vs_beta
from ntk_lab.records import atomic_write_text
from ntk_lab.analysis.markdown import frame_table

# Columns of fluctuations.csv (the documented contract, docs/conventions.md) and the extra ones that follow them.
TABLE_COLUMNS = ("width", "depth", "beta", "n_seeds", "moment_ratio", "ci_low", "ci_high")
EXTRA_COLUMNS = ("mean_theta", "mean_theta_se", "theta_inf", "predicted_ratio")
FIT_COLUMNS = ("scope", "rate", "intercept", "ci_low", "ci_high", "n_points", "beta_max",
               "ci_method")

CONFIDENCE = 0.95
# Percentile bootstrap over seeds: 2000 resamples put ~50 replicates beyond each 2.5 %
# percentile, enough for a stable interval; the fixed seed makes the files reproducible.
N_BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0
# Hanin & Nica's rate for ReLU: E[Θ²]/E[Θ]² ≃ exp(5β).
HANIN_NICA_RATE = 5.0
DEFAULT_MEMORY_BUDGET_BYTES = 256 << 20


# ------------------------------------------------------------------ Θ(x, x) over seeds


def _layer_scales(template: MLP) -> list[tuple[float, float]]:
    return [(layer.weight_multiplier, layer.bias_multiplier) for layer in template.layers]


def _seed_chunk_size(template: MLP, itemsize: int, budget_bytes: int) -> int:
    """Seeds per chunk: stacked parameters plus forward activations and masks per seed."""
    params = sum(p.numel() for p in template.parameters())
    activations = 3 * sum(layer.out_features + layer.in_features for layer in template.layers)
    return max(1, budget_bytes // (itemsize * (params + activations)))


def _draw_chunk(template: MLP, seeds: Sequence[int], weights: list[Tensor],
                biases: list[Tensor]) -> None:
    """Fill slot j of the stacked tensors with the parameters of ``MLP(..., seed=seeds[j])``.

    The template's layers redraw themselves exactly as :class:`MLP` does at construction (a
    CPU generator seeded with the seed, layers in order); the test suite checks the result
    against ``MLP(seed=s)``.
    """
    for j, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(int(seed))
        for i, layer in enumerate(template.layers):
            layer.reset_parameters(generator)
            weights[i][j].copy_(layer.weight.detach())
            biases[i][j].copy_(layer.bias.detach())


def _batched_ntk_diagonal(template: MLP, x: Tensor, weights: list[Tensor],
                          biases: list[Tensor]) -> Tensor:
    """Θ(x, x) of S stacked networks, one output: Σ_l (m_W²‖h^{l-1}‖² + m_b²)·‖δ^l‖².

    δ^{L+1} = 1, δ^l = (δ^{l+1} W_eff^{l+1}) ⊙ φ'(z^l): the per-layer factorization of a
    dense layer's gradient (Novak et al. 2022), batched over seeds with bmm.

    Args:
        x: (d,) the input. weights[l]: (S, out, in); biases[l]: (S, out).

    Returns:
        (S,) float64.
    """
    act = template.activation
    scales = _layer_scales(template)
    n_seeds = weights[0].shape[0]
    h = x.expand(n_seeds, -1)
    inputs, preacts = [], []
    for i, (m_w, m_b) in enumerate(scales):
        inputs.append(h)
        z = torch.bmm(weights[i], h.unsqueeze(-1)).squeeze(-1) * m_w + biases[i] * m_b
        preacts.append(z)
        h = act.fn(z) if i < len(scales) - 1 else z
    delta = torch.ones(n_seeds, 1, dtype=x.dtype, device=x.device)
    theta = torch.zeros(n_seeds, dtype=torch.float64, device=x.device)
    for i in range(len(scales) - 1, -1, -1):
        m_w, m_b = scales[i]
        sq_in = inputs[i].pow(2).sum(-1)
        theta += ((m_w**2 * sq_in + m_b**2) * delta.pow(2).sum(-1)).double()
        if i > 0:
            delta = (torch.bmm(delta.unsqueeze(1), weights[i]).squeeze(1) * m_w
                     * act.derivative(preacts[i - 1]))
    return theta


def ntk_diagonal_samples(
    x: Tensor,
    *,
    width: int,
    depth: int,
    seeds: Sequence[int],
    activation: str = "relu",
    parameterization: str = "ntk",
    w_std: float = math.sqrt(2.0),
    b_std: float = 0.0,
    dtype: torch.dtype = torch.float64,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    progress: Optional[Callable[[int], None]] = None,
) -> Tensor:
    """Θ(x, x) at initialization of ``MLP(d, width, depth, 1, ..., seed=s)`` for every seed s.

    Args:
        x: (d,) one input.
        width, depth: the network's hidden width n and number of hidden layers L.
        seeds: the initialization seeds (one network each).
        activation, parameterization, w_std, b_std: as :class:`~ntk_lab.models.MLP`.
        dtype: the networks' dtype (the sums are accumulated in float64).
        memory_budget_bytes: cap on the stacked parameters held at once; seeds are
            processed in chunks that fit.
        progress: called with the number of seeds done after each chunk.

    Returns:
        (len(seeds),) float64 tensor on x's device: Θ(x, x) per seed (one output, so the
        trace mode of docs/conventions.md is the kernel itself).
    """
    if x.dim() != 1:
        raise ValueError(f"x must be one input of shape (d,), got {tuple(x.shape)}")
    template = MLP(x.shape[0], width, depth, out_dim=1, activation=activation,
                   parameterization=parameterization, w_std=w_std, b_std=b_std)
    x = x.to(dtype)
    chunk = min(len(seeds), _seed_chunk_size(template, x.element_size(), memory_budget_bytes))
    new = lambda *shape: torch.empty(chunk, *shape, dtype=dtype, device=x.device)  # noqa: E731
    weights = [new(layer.out_features, layer.in_features) for layer in template.layers]
    biases = [new(layer.out_features) for layer in template.layers]
    out = []
    for start in range(0, len(seeds), chunk):
        part = list(seeds[start:start + chunk])
        _draw_chunk(template, part, weights, biases)
        n = len(part)
        out.append(_batched_ntk_diagonal(template, x, [w[:n] for w in weights],
                                         [b[:n] for b in biases]))
        if progress is not None:
            progress(n)
    return torch.cat(out)


# ------------------------------------------------------------------ moments and intervals


def moment_ratio(samples: Tensor | np.ndarray) -> float:
    """E[Θ²] / E[Θ]² with sample means: mean(Θ²) / mean(Θ)²."""
    s = np.asarray(samples, dtype=np.float64)
    return float(np.mean(s * s) / np.mean(s) ** 2)


def bootstrap_moment_ratios(samples: Tensor | np.ndarray, n_bootstrap: int = N_BOOTSTRAP,
                            seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Moment ratios of ``n_bootstrap`` resamples (with replacement) of the seeds: (B,)."""
    s = np.asarray(samples, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(s), size=(n_bootstrap, len(s)))
    resampled = s[picks]
    return (resampled * resampled).mean(1) / resampled.mean(1) ** 2


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of bootstrap replicates."""
    low, high = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


# ------------------------------------------------------------------ the grid and the fit


@dataclass
class FluctuationResult:
    """fluctuations.csv as a table, and the bootstrap replicates behind its intervals.

    Attributes:
        table: columns :data:`TABLE_COLUMNS` + :data:`EXTRA_COLUMNS`, one row per (width,
            depth); ``mean_theta`` = mean Θ(x, x) over seeds, ``mean_theta_se`` its standard
            error, ``theta_inf`` = Θ_∞(x, x).
        replicates: (rows, B) bootstrap moment ratios, row order as the table's.
    """

    table: pd.DataFrame
    replicates: np.ndarray


def measure_grid(
    widths: Sequence[int], depths: Sequence[int], n_seeds: int, *, in_dim: int = 8,
    activation: str = "relu", parameterization: str = "ntk", w_std: float = math.sqrt(2.0),
    b_std: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu", memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    n_bootstrap: int = N_BOOTSTRAP, progress: Optional[Callable[[int], None]] = None,
) -> FluctuationResult:
    """Moment ratio of Θ(x, x) over seeds ``seed … seed + n_seeds − 1`` at every (width, depth).

    The input is x = (1, …, 1) ∈ R^in_dim (‖x‖²/d = 1). For ReLU with σ_b = 0 the first layer
    is rotation invariant, so the distribution of Θ(x, x)/‖x‖² does not depend on x.
    """

    x = torch.ones(in_dim, dtype=torch.float64, device=device)
    seeds = range(seed, seed + n_seeds)
    rows, replicates = [], []
    for width in widths:
        for depth in depths:
            samples = ntk_diagonal_samples(
                x, width=width, depth=depth, seeds=seeds, activation=activation,
                parameterization=parameterization, w_std=w_std, b_std=b_std, dtype=dtype,
                memory_budget_bytes=memory_budget_bytes, progress=progress).cpu().numpy()
            boot = bootstrap_moment_ratios(samples, n_bootstrap)
            low, high = percentile_interval(boot)
            _, theta_inf = infinite_width_kernels(
                x[None], activation=activation, depth=depth, w_std=w_std, b_std=b_std,
                parameterization=parameterization, width=width)
            predicted = _predicted_ratio(x, activation, depth, width, w_std, b_std, parameterization)
            rows.append({"width": width, "depth": depth, "beta": depth / width,
                         "n_seeds": n_seeds, "moment_ratio": moment_ratio(samples),
                         "ci_low": low, "ci_high": high, "mean_theta": float(samples.mean()),
                         "mean_theta_se": float(samples.std(ddof=1) / math.sqrt(n_seeds)),
                         "theta_inf": float(theta_inf[0, 0]), "predicted_ratio": predicted})
            replicates.append(boot)
    table = pd.DataFrame(rows, columns=[*TABLE_COLUMNS, *EXTRA_COLUMNS])
    return FluctuationResult(table, np.stack(replicates) if replicates else np.empty((0, 0)))


def _predicted_ratio(x: Tensor, activation: str, depth: int, width: int, w_std: float,
                     b_std: float, parameterization: str) -> float:
    """E[Θ²]/E[Θ]² ≈ 1 + V_Θ(x, x)/(n·Θ_∞(x, x)²) from the NTK's 1/n variance
    (:mod:`ntk_lab.kernels.finite_width_ntk`): the recursion's value at small β, where Hanin &
    Nica's exp(cβ) is 1 + cβ; NaN outside the ntk / mup parameterizations."""
    if parameterization not in ("ntk", "mup"):
        return math.nan
    pred = ntk_finite_width_variance(x[None].cpu(), activation=activation, depth=depth,
                                     w_std=w_std, b_std=b_std)
    return 1.0 + float(pred["ntk_variance"][0, 0]) / (width * float(pred["ntk"][0, 0]) ** 2)


def _line(beta: np.ndarray, log_ratio: np.ndarray) -> tuple[float, float]:
    """OLS slope and intercept of log_ratio (…, n) against beta (n,)."""
    bc = beta - beta.mean()
    slope = (log_ratio - log_ratio.mean(-1, keepdims=True)) @ bc / (bc @ bc)
    return slope, log_ratio.mean(-1) - slope * beta.mean()


def fit_rate(result: FluctuationResult, scope: str = "all",
             mask: Optional[np.ndarray] = None, confidence: float = CONFIDENCE) -> dict:
    """Fit log(moment_ratio) = intercept + rate·β by least squares over the chosen rows.

    The interval is a bootstrap over seeds: replicate b refits the line through the b-th
    bootstrap moment ratio of every grid point (points use independent seeds' resamples),
    so it carries the sampling noise of the ratios, not any curvature of the law.

    Args:
        result: the measured grid.
        scope: a label for the fitted rows (``all``, ``width=64``, …).
        mask: which table rows enter (default all).

    Returns:
        A row of :data:`FIT_COLUMNS`; NaN rate with fewer than two distinct β.
    """
    table = result.table
    mask = np.ones(len(table), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    beta = table["beta"].to_numpy(dtype=float)[mask]
    ratio = table["moment_ratio"].to_numpy(dtype=float)[mask]
    row = {"scope": scope, "n_points": int(mask.sum()),
           "beta_max": float(beta.max()) if len(beta) else math.nan, "ci_method": "bootstrap-seeds"}
    if len(np.unique(beta)) < 2:
        return {**row, "rate": math.nan, "intercept": math.nan, "ci_low": math.nan,
                "ci_high": math.nan, "ci_method": "none"}
    rate, intercept = _line(beta, np.log(ratio))
    boot_rates, _ = _line(beta, np.log(result.replicates[mask].T))  # (B,)
    low, high = percentile_interval(boot_rates, confidence)
    return {**row, "rate": float(rate), "intercept": float(intercept), "ci_low": low,
            "ci_high": high}


def fit_table(result: FluctuationResult) -> pd.DataFrame:
    """The rate fitted over all points and along each width (depth varying)."""
    rows = [fit_rate(result)]
    widths = result.table["width"].to_numpy()
    for width in sorted(set(widths.tolist())):
        rows.append(fit_rate(result, f"width={width}", widths == width))
    return pd.DataFrame(rows, columns=list(FIT_COLUMNS))


# ------------------------------------------------------------------ the study's folder

TABLE_FILE = "fluctuations.csv"
FITS_FILE = "fits.csv"
FIGURE_FILE = "moment_ratio_vs_beta.png"
REPORT_FILE = "report.md"


def equal_beta_groups(table: pd.DataFrame) -> pd.DataFrame:
    """Rows whose β is shared by at least two widths: the collapse test of the study."""
    counts = table.groupby("beta")["width"].transform("nunique")
    return table[counts >= 2].sort_values(["beta", "width"])


def write_study(result: FluctuationResult, fits: pd.DataFrame, out_dir: Path,
                settings: dict) -> Path:
    """Write fluctuations.csv, fits.csv, the figure and report.md to ``out_dir``.

    Args:
        result: the measured grid.
        fits: :func:`fit_table` of it.
        out_dir: the study's output folder.
        settings: the resolved settings, listed in the report.

    Returns:
        The report's path.
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / TABLE_FILE, result.table.to_csv(index=False))
    atomic_write_text(out_dir / FITS_FILE, fits.to_csv(index=False))
    drew = plot_moment_ratio_vs_beta(result.table, fits, out_dir / FIGURE_FILE)
    lines = ["# Finite-width fluctuations of the NTK at initialization", "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), "",
             "Prediction (Hanin & Nica 2019): E[Θ(x,x)²]/E[Θ(x,x)]² ≃ exp(5β), β = L/n, up to "
             "constants; the curves of all widths collapse onto one function of β.", "",
             "## Rate of log moment_ratio in β", "",
             *frame_table(fits, 4), "",
             f"Hanin & Nica's rate: {HANIN_NICA_RATE:g}. Intervals: {CONFIDENCE:.0%} bootstrap "
             "over seeds.", "",
             "## Equal β, different widths (collapse)", "",
             *frame_table(equal_beta_groups(result.table)[
                 ["beta", "width", "depth", "moment_ratio", "ci_low", "ci_high"]], 4), "",
             "## All points", "", *frame_table(result.table, 4), ""]
    if drew:
        lines += [f"![moment ratio vs beta]({FIGURE_FILE})", ""]
    atomic_write_text(out_dir / REPORT_FILE, "\n".join(lines))
    return out_dir / REPORT_FILE
