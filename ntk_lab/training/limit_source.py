"""Where a run's Θ_∞ comes from: the closed form of a built-in network, or a Monte-Carlo estimate
(``lazy.infinite_width=monte_carlo``) for any network, a user's module included.

The Monte-Carlo estimate is the mean of the empirical NTK (and of f(x)f(x')ᵀ/O for the NNGP)
over ``ntk.mc_samples`` networks built like the run's at width ``ntk.mc_width``
(:func:`ntk_lab.kernels.monte_carlo.monte_carlo_kernels`), in float64. It converges to
E[Θ_0] at that width, which is Θ_∞ + O(1/width): a wide ``mc_width`` makes the bias small, more
samples the standard error (the run records both). Every call draws the same networks (the
seeds start at :data:`MC_SEED`), so the probe set's and the prediction's kernels are of one
ensemble and do not depend on the run's own seed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from ntk_lab.kernels.finite_width_ntk import predicted_ntk_error
from ntk_lab.kernels.finite_width_residual_mean import predicted_resmlp_ntk_error, resmlp_ntk_corrections
from ntk_lab.kernels.monte_carlo import monte_carlo_kernels
from ntk_lab.kernels.network_limit import LimitCost, estimate_limit_cost, format_duration, infinite_width_of
from ntk_lab.models import NetworkSpec, build_network

MC_CALIBRATION_INPUTS = 8
"""Inputs per side of the one-network block a Monte-Carlo cost estimate times: the empirical
NTK's cost per pair is near its large-block rate from a few inputs on (the Jacobian pass
dominates), and the block stays a fraction of a second for any network the lab trains."""
MC_SEED = 1_000_000
"""First seed of the Monte-Carlo networks: far from the seeds runs use (0, 1, 2, …), so that
the estimate is never the run's own network."""


@dataclass(frozen=True)
class LimitSource:
    """The closed form (``monte_carlo`` False) or a Monte-Carlo estimate with ``samples``
    networks at ``width`` (None: the run's width)."""

    monte_carlo: bool = False
    width: Optional[int] = None
    samples: int = 16


def limit_kernels(spec: NetworkSpec, x1: Tensor, x2: Optional[Tensor] = None, *,
                  source: LimitSource = LimitSource(), out_dim: int = 1,
                  progress: bool = False) -> Optional[tuple[Tensor, Tensor, Optional[dict[str, Any]]]]:
    """(NNGP_∞, Θ_∞, how they were estimated) between x1 and x2, float64 (N1, N2).

    The closed form gives None for a custom module (no known limit) and no estimate record;
    the Monte-Carlo source gives a record for ``summary.json``: the width, the samples and the
    relative standard error ‖SE‖_F/‖Θ‖_F of each kernel.
    """
    if not source.monte_carlo:
        limit = infinite_width_of(spec, x1, x2, progress=progress)
        return None if limit is None else (*limit, None)
    width = source.width or spec.width
    wide = dataclasses.replace(spec, width=width)
    in_shape = tuple(x1.shape[1:])

    def build(seed: int) -> torch.nn.Module:
        return build_network(wide, in_shape, out_dim, seed=seed, dtype=torch.float64, device=x1.device)

    mc = monte_carlo_kernels(build, x1.to(torch.float64), None if x2 is None else x2.to(torch.float64),
                             n_samples=source.samples, seed=MC_SEED, progress=progress)
    record = {"estimate": "monte_carlo", "width": width, "samples": source.samples,
              "first_seed": MC_SEED,
              "ntk_relative_se": _relative(mc["ntk_se"], mc["ntk"]),
              "nngp_relative_se": _relative(mc["nngp_se"], mc["nngp"])}
    return mc["nngp"], mc["ntk"], record


def _relative(se: Tensor, value: Tensor) -> float:
    norm = value.norm().item()
    return se.norm().item() / norm if norm > 0 else float("nan")


def estimate_source_cost(spec: NetworkSpec, x: Tensor, blocks: list[tuple[int, int, bool]], *,
                         source: LimitSource, out_dim: int = 1,
                         confirm_above: Optional[float] = None) -> Optional[LimitCost]:
    """Seconds that :func:`limit_kernels` will take for the kernel ``blocks``, each (N1, N2,
    symmetric), on inputs like ``x``'s rows.

    The closed form: :func:`ntk_lab.kernels.network_limit.estimate_limit_cost` on the number of
    input pairs (half a symmetric block). A Monte-Carlo source: one network's kernels timed on
    blocks of B and 2B inputs (B = :data:`MC_CALIBRATION_INPUTS`), fitted to
    t(N1, N2) = a·(N1 + N2) + b·N1·N2 — the per-input Jacobian pass and the per-pair contraction
    of the empirical NTK — and scaled by the samples.
    """
    pairs = sum(n1 * (n1 + 1) // 2 if symmetric else n1 * n2 for n1, n2, symmetric in blocks)
    if not source.monte_carlo:
        return estimate_limit_cost(spec, x, pairs, confirm_above=confirm_above)
    if pairs <= 0:
        return None
    wide = dataclasses.replace(spec, width=source.width or spec.width)

    def build(seed: int) -> torch.nn.Module:
        return build_network(wide, tuple(x.shape[1:]), out_dim, seed=seed, dtype=torch.float64,
                             device=x.device)

    x = x.to(torch.float64)
    monte_carlo_kernels(build, x[:1], n_samples=1, seed=MC_SEED)  # warm-up: first-call costs
    times = {}
    for size in (MC_CALIBRATION_INPUTS, 2 * MC_CALIBRATION_INPUTS):
        block = x[:size] if len(x) >= size else x[torch.arange(size) % len(x)]
        started = time.perf_counter()
        monte_carlo_kernels(build, block, block.clone(), n_samples=1, seed=MC_SEED)
        times[size] = time.perf_counter() - started
    b_small, b_large = MC_CALIBRATION_INPUTS, 2 * MC_CALIBRATION_INPUTS
    # t(B) = 2B·a + B²·b and t(2B) = 4B·a + 4B²·b
    per_pair = max((times[b_large] - 2 * times[b_small]) / (2 * b_small**2), 0.0)
    per_input = max((times[b_small] - b_small**2 * per_pair) / (2 * b_small), 0.0)
    seconds = source.samples * sum(per_input * (n1 + n2) + per_pair * n1 * n2 for n1, n2, _ in blocks)
    return LimitCost(pairs, seconds, seconds / pairs)


MAX_PREDICTION_PROBE = 128
"""The largest probe set whose ntk_err_inf_pred a run computes: V_Θ and Θ^(1) take 2-D Gaussian
moments per pair and layer (exact polar integrals for relu, Gauss–Hermite grids otherwise). For
128 points at depth 3 that took 0.3 s (relu), 4.2 s (erf) and 28 s (tanh, no closed form) here;
a 4096-point probe set would take hours and gigabytes."""
MAX_RESIDUAL_PREDICTION_PROBE = 32
"""The residual MLP's V_Θ and Θ^(1) need 4-D Gaussian moments per pair and pair of layers (a unit
persists across layers): with ``RESIDUAL_PREDICTION_NODES``, on this 2-core machine while another
job ran, 16 points at depth 4 took 19 s (relu) and 26 s (tanh; V_Θ alone 13 and 16 s), and 32
points 105 s (tanh). The run announces the estimate first (:func:`_announce_residual_cost`)."""
RESIDUAL_PREDICTION_NODES = 24
"""Gauss–Hermite nodes per axis of the residual MLP's nested rule in a run (40 by default): 7×
cheaper; against 56 nodes V_Θ moves by 0.3 % (erf, depth 2), 0.4 % (tanh, depth 3) and 2.4 %
(tanh, depth 5, β = 1), so the predicted ‖Θ_0 − Θ_∞‖ by half that; Θ^(1) by 0.25 % of its
largest entry (erf and relu, depth 2)."""


def fluctuation_prediction(spec: NetworkSpec, x: Tensor, theta_inf: Tensor, out_dim: int,
                           source: LimitSource = LimitSource()) -> tuple[Optional[float], str]:
    """(``ntk_err_inf_pred``, '') — the predicted root-mean-square ‖Θ_0 − Θ_∞‖_F/‖Θ_∞‖_F at the
    run's width on the probe inputs x, from the NTK's finite-width variance and mean correction
    (:func:`ntk_lab.kernels.finite_width_ntk.predicted_ntk_error`, and for a residual MLP
    :func:`ntk_lab.kernels.finite_width_residual_mean.predicted_resmlp_ntk_error`) — or (None, why not)."""
    if spec.name not in ("mlp", "resmlp"):
        return None, "ntk_err_inf_pred: the NTK's finite-width corrections are derived for the MLP and the residual MLP only"
    if source.monte_carlo:
        return None, "ntk_err_inf_pred: predicted against the closed-form Θ_∞ only"
    residual = spec.name == "resmlp"
    if residual and spec.parameterization == "standard":
        return None, "ntk_err_inf_pred: the residual MLP's NTK corrections are derived for parameterization ntk (and mup)"
    limit = MAX_RESIDUAL_PREDICTION_PROBE if residual else MAX_PREDICTION_PROBE
    if len(x) > limit:
        return None, (f"ntk_err_inf_pred: not computed for a probe set of {len(x)} points (its pairs' "
                      f"Gaussian moments would cost minutes); it is for data.n_probe <= {limit}")
    settings = dict(width=spec.width, activation=spec.activation, depth=spec.depth, w_std=spec.w_std,
                    b_std=spec.b_std, out_dim=out_dim)
    try:
        if residual:
            flat = x.to(torch.float64).flatten(1)
            _announce_residual_cost(spec, flat)
            value = predicted_resmlp_ntk_error(flat, theta_inf, branch_scale=spec.branch_scale,
                                               nodes=RESIDUAL_PREDICTION_NODES, **settings)
        else:
            value = predicted_ntk_error(x.to(torch.float64).flatten(1), theta_inf,
                                        parameterization=spec.parameterization, **settings)
    except ValueError as err:
        return None, f"ntk_err_inf_pred: {err}"
    return value, ""


PREDICTION_ANNOUNCE_S = 2.0
"""A residual MLP's ntk_err_inf_pred estimated to take longer than this is announced in one line."""


def _announce_residual_cost(spec: NetworkSpec, x: Tensor) -> None:
    """Time the residual MLP's V_Θ and Θ^(1) on 1 and on 4 distinct pairs of x after a warm-up (the
    difference separates the per-call overhead from the per-pair cost), scale to x's distinct
    pairs (the diagonal's 1-D states are ~100× cheaper), and say so when it exceeds a few
    seconds."""
    if len(x) < 5:
        return
    settings = dict(activation=spec.activation, depth=spec.depth, w_std=spec.w_std, b_std=spec.b_std,
                    branch_scale=spec.branch_scale, nodes=RESIDUAL_PREDICTION_NODES)
    resmlp_ntk_corrections(x[:1], **settings)  # warm-up: first-call costs, on a cheap 1-D state
    times = []
    for count in (1, 4):
        started = time.perf_counter()
        resmlp_ntk_corrections(x[:1], x[1:1 + count], **settings)
        times.append(time.perf_counter() - started)
    per_pair = max((times[1] - times[0]) / 3.0, 0.0)
    pairs = len(x) * (len(x) - 1) // 2
    seconds = max(times[0] - per_pair, 0.0) + per_pair * pairs
    if seconds > PREDICTION_ANNOUNCE_S:
        print(f"ntk_lab: ntk_err_inf_pred (the residual MLP's NTK corrections): ~{format_duration(seconds)} "
              f"for {pairs:,} pairs of probe inputs (estimated; data.n_probe sets the pairs)", flush=True)
