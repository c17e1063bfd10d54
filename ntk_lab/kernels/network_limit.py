"""Θ_∞ of a network described by its settings: the question "what is this network's
infinite-width kernel?" answered next to the kernels (models never import kernels) — and
how long it will take, before it is asked.

The cost of Θ_∞ grows with the number of input pairs and, for a conv net, with the positions
each pair carries: (P, P) per pair for global average pooling, P for a flatten readout. Rather
than model the arithmetic, :func:`estimate_limit_cost` times the same computation on a few
inputs of the same shape (milliseconds) and scales by the number of pairs; small blocks are
less efficient than the large tiles of the real computation, so the estimate errs high.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from ntk_lab.kernels.analytic import infinite_width_kernels
from ntk_lab.layers.state import NoClosedForm
from ntk_lab.models import NetworkSpec, build_network

NO_LIMIT_REASON = ("model=custom: a user's module has no known infinite-width limit, so Θ_∞ is NaN "
                   "and the metrics built on it (ntk_err_inf; inf_gap, test_loss_inf, "
                   "test_loss_kernel_regression with lazy.infinite_width) are NaN or not recorded")


def infinite_width_of(spec: NetworkSpec, x1: torch.Tensor, x2: Optional[torch.Tensor] = None, *,
                      progress: bool = False):
    """(NNGP_∞, Θ_∞) float64 of the network ``spec`` describes between x1 and x2, or None for
    a custom module (no known limit: :data:`NO_LIMIT_REASON`).

    None also when a layer has no closed form in these settings (:func:`limit_unavailable`).
    The MLP uses the keyword form of :func:`ntk_lab.kernels.infinite_width_kernels`; CNN,
    ResMLP and Transformer are built on the ``meta`` device (no storage: their kernel maps need only the
    layers' coefficients) and their maps composed; ``progress`` shows a bar over their tiles.
    """
    limit = _limit_function(spec, tuple(x1.shape[1:]))
    if limit is None:
        return None
    try:
        return limit(x1, x2, progress)
    except NoClosedForm:  # a layer without a closed form in these settings: limit_unavailable says why
        return None


def limit_unavailable(spec: NetworkSpec, x: torch.Tensor) -> Optional[str]:
    """Why the network of ``spec`` has no closed-form Θ_∞ on inputs like ``x``'s rows — a custom
    module (:data:`NO_LIMIT_REASON`), or a layer without a closed form in these settings
    (:class:`~ntk_lab.layers.state.NoClosedForm`: softmax attention with 1/√n_k logits, a
    LayerNorm with a trained gain) — else None. Tries the maps on one input (milliseconds)."""
    limit = _limit_function(spec, tuple(x.shape[1:]))
    if limit is None:
        return NO_LIMIT_REASON
    try:
        limit(x[:1].to(torch.float64), None, False)
    except NoClosedForm as err:
        return (f"{err}; so Θ_∞ is NaN and the metrics built on it are NaN or not recorded "
                f"(lazy.infinite_width=monte_carlo estimates Θ_∞ instead)")
    return None


def _limit_function(spec: NetworkSpec, in_shape: tuple[int, ...]):
    """``(x1, x2, progress) -> (nngp, ntk)`` for the network of ``spec`` on inputs of shape
    ``in_shape`` (a CNN or ResMLP is built once, on the meta device), or None (custom)."""
    if spec.name == "custom":
        return None
    if spec.name == "mlp":
        return lambda x1, x2, progress: infinite_width_kernels(
            x1, x2, activation=spec.activation, depth=spec.depth, w_std=spec.w_std,
            b_std=spec.b_std, parameterization=spec.parameterization, width=spec.width)
    meta = torch.device("meta")
    with meta:
        net = build_network(spec, in_shape, 1, seed=None, dtype=torch.float64, device=meta)
    return lambda x1, x2, progress: infinite_width_kernels(x1, x2, model=net, progress=progress)


# The calibration doubles its block of inputs until one call takes CALIBRATION_S with at least
# CALIBRATION_MIN_INPUTS per side (so that the per-call cost of a few Python-level layer maps
# is shared by 16 pairs or more), or one call takes CALIBRATION_MAX_S (large images: that
# block is representative), or CALIBRATION_MAX_INPUTS per side are used.
CALIBRATION_S = 0.02
CALIBRATION_MIN_INPUTS = 4
CALIBRATION_MAX_S = 0.5
CALIBRATION_MAX_INPUTS = 64
# Each block is timed this often and the fastest kept: a one-off stall (another process, a
# first-use cost) must not inflate the estimate and make auto skip a cheap prediction.
CALIBRATION_REPEATS = 2
# An estimate above the caller's limit is checked by this many more calibrations, the lowest
# kept. On a loaded 2-core machine (torch's two threads sharing the cores with other jobs, so
# that each parallel region can wait a scheduler slice for its second thread) one flatten-CNN
# estimate was 0.8 s alone and 19 s to 5.6 min in a sweep beside three busy processes; a
# decision to skip work must not rest on one such draw.
CONFIRM_TRIES = 3


@dataclass(frozen=True)
class LimitCost:
    """The estimated cost of Θ_∞ for ``pairs`` input pairs: ``seconds`` on this machine."""

    pairs: int
    seconds: float
    seconds_per_pair: float

    def describe(self) -> str:
        return f"~{format_duration(self.seconds)} for {self.pairs:,} pairs of inputs"


def estimate_limit_cost(spec: NetworkSpec, x: torch.Tensor, pairs: int, *,
                        confirm_above: Optional[float] = None) -> Optional[LimitCost]:
    """Seconds that (NNGP_∞, Θ_∞) of ``spec`` will take for ``pairs`` input pairs like ``x``'s
    rows, timed on blocks of 1, 2, 4, … of them after one warm-up call, the network built
    once as the real computation builds it once (None for a custom module: no limit).

    Args:
        spec: the network's settings.
        x: (N, …) inputs of the shape the network takes (at least one).
        pairs: how many (x, x') pairs the real computation evaluates.
        confirm_above: seconds (a caller's limit): an estimate above it is calibrated again,
            up to :data:`CONFIRM_TRIES` times, and the lowest kept.
    """
    limit = _limit_function(spec, tuple(x.shape[1:]))
    if limit is None or pairs <= 0:
        return None
    x = x.to(torch.float64)
    try:
        limit(x[:1], x[:1].clone(), False)  # warm-up: first-call costs are not per pair
    except NoClosedForm:  # no closed form in these settings: nothing to estimate
        return None
    per_pair = _seconds_per_pair(limit, x)
    for _ in range(CONFIRM_TRIES if confirm_above is not None else 0):
        if per_pair * pairs <= confirm_above:
            break
        per_pair = min(per_pair, _seconds_per_pair(limit, x))
    return LimitCost(pairs, per_pair * pairs, per_pair)


def _seconds_per_pair(limit, x: torch.Tensor) -> float:
    """One calibration: the fastest of CALIBRATION_REPEATS timings of the first block of
    inputs that is large enough (see CALIBRATION_S), per pair."""
    n, spent = 1, 0.0
    while True:
        a = x[:n]
        b = x[n:2 * n] if len(x) >= 2 * n else x[:n].clone()  # not symmetric: n² pairs
        spent = min(_timed(limit, a, b) for _ in range(CALIBRATION_REPEATS))
        enough = spent >= CALIBRATION_S and n >= CALIBRATION_MIN_INPUTS
        if enough or spent >= CALIBRATION_MAX_S or 2 * n > min(len(x), CALIBRATION_MAX_INPUTS):
            break
        n *= 2
    return spent / (len(a) * len(b))


def _timed(limit, a: torch.Tensor, b: torch.Tensor) -> float:
    started = time.perf_counter()
    limit(a, b, False)
    return time.perf_counter() - started


def format_duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3.2 min``, ``5.1 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
