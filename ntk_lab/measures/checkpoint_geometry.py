"""The kernel-geometry columns of a run's checkpoints, from the checkpoint's Θ_t.

At every checkpoint the training loop hands over Θ_t on the probe set (and, when the
structured method already has them, the per-layer kernels Θ_{l,t} and the readout's input
features); :class:`CheckpointGeometry` returns the row's columns

    alignment, alignment_layer{i}            centered kernel-target alignment with the probe targets
    eff_rank, top_eig_share                  of Θ_t's spectrum
    eig_overlap_init, eig_overlap_inf        top-k eigenspace overlap with Θ_0 and with Θ_∞
    target_power_topk                        share of ‖y‖² in Θ_t's top-k eigenspace
    kernel_velocity                          kernel_distance to the previous checkpoint / Δtime
    ck_kappa, nngp_err_inf                   the conjugate kernel's drift and distance to NNGP_∞
    kappa_layer{i}, ntk_share_layer{i}       per-layer drift and share tr Θ_l / tr Θ

and the arrays ``kernels.pt`` keeps (``eigvals``, ``theta_layers``). Definitions and papers:
:mod:`ntk_lab.measures.geometry`. Layers are numbered from 1 in forward order (the readout last), as
the ``param_change_layer{i}`` columns.

Spectra cost O(N³): above ``spectrum_max_probe`` probe points the spectral columns are NaN
(the run's summary says so) unless the cap is raised.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ntk_lab.measures import geometry
from ntk_lab.models.layer_outputs import readout_features
from ntk_lab.models import unwrap_mlp

DEFAULT_TOP_K = 8
DEFAULT_SPECTRUM_MAX_PROBE = 1024
SPECTRAL_COLUMNS = ("eff_rank", "top_eig_share", "eig_overlap_init", "eig_overlap_inf",
                    "target_power_topk")


def layer_kernels(model: nn.Module, x: Tensor, memory_budget_bytes: int) -> Tensor:
    """Per-layer NTK Θ_l (L, N, N), trace mode, summing to Θ: one slice per parameterized
    layer (:func:`ntk_lab.kernels.empirical.empirical_ntk_layers`).

    Raises:
        ValueError: the module has no trainable layer.
    """
    from ntk_lab.kernels.empirical import empirical_ntk_layers

    return empirical_ntk_layers(model, x, memory_budget_bytes=memory_budget_bytes)


def ck_scales(model: nn.Module) -> tuple[float, float, bool]:
    """(σ_w, σ_b, known) of the network: the MLP's, or (1, 0, False) for other modules,
    whose conjugate kernel then has no NNGP_∞ to compare with."""
    mlp, _ = unwrap_mlp(model)
    inner = mlp if mlp is not None else model
    w_std, b_std = getattr(inner, "w_std", None), getattr(inner, "b_std", None)
    if isinstance(w_std, (int, float)) and isinstance(b_std, (int, float)):
        return float(w_std), float(b_std), True
    return 1.0, 0.0, False


def _finite_or_none(kernel: Optional[Tensor]) -> Optional[Tensor]:
    return kernel if kernel is not None and bool(torch.isfinite(kernel).all()) else None


class CheckpointGeometry:
    """Computes the geometry columns checkpoint after checkpoint; the first call is step 0.

    Args:
        y_probe: (N, O) targets of the probe inputs, or None (alignment and target power NaN).
        theta_inf: (N, N) Θ_∞ on the probe set, or None.
        nngp_inf: (N, N) NNGP_∞ on the probe set, or None.
        w_std, b_std: σ_w, σ_b of the conjugate kernel (:func:`ck_scales`).
        top_k: k of the eigenspace overlaps and the target power (≤ N used).
        spectrum_max_probe: the largest N whose spectrum is computed.
    """

    def __init__(self, y_probe: Optional[Tensor], theta_inf: Optional[Tensor],
                 nngp_inf: Optional[Tensor], *, w_std: float = 1.0, b_std: float = 0.0,
                 top_k: int = DEFAULT_TOP_K,
                 spectrum_max_probe: int = DEFAULT_SPECTRUM_MAX_PROBE):
        self.y = y_probe
        # a module without a known limit (model=custom) has NaN kernels: its *_inf columns are NaN
        self.nngp_inf = _finite_or_none(nngp_inf)
        self.w_std, self.b_std = w_std, b_std
        self.top_k = top_k
        self.spectrum_max_probe = spectrum_max_probe
        self.theta_inf = _finite_or_none(theta_inf)
        self._u_inf: Optional[Tensor] = None
        self._u_0: Optional[Tensor] = None
        self._layers_0: Optional[Tensor] = None
        self._layer_norms_0: Optional[list[float]] = None
        self._ck_0: Optional[Tensor] = None
        self._ck_norm_0 = self._nngp_norm = float("nan")
        self._previous: Optional[tuple[Tensor, float]] = None

    def spectra_computed(self, n_probe: int) -> bool:
        return n_probe <= self.spectrum_max_probe

    def __call__(self, theta: Tensor, time: float, *, theta_layers: Optional[Tensor] = None,
                 ck: Optional[Tensor] = None) -> tuple[dict, dict]:
        """The columns of one checkpoint, and the arrays to keep.

        Args:
            theta: Θ_t (N, N).
            time: η·step of the checkpoint.
            theta_layers: Θ_{l,t} (L, N, N), or None (no per-layer columns).
            ck: the conjugate kernel at θ_t (N, N) (:func:`probe_geometry_inputs`), or None
                (no CK columns).

        Returns:
            (columns, arrays): arrays has ``eigvals`` (N,) float64 when the spectrum was
            computed and ``theta_layers`` when given.
        """
        theta = theta.detach()  # read, never written: the recorder may hold the same tensor
        nan = float("nan")
        row: dict = {"alignment": self._alignment(theta)}
        arrays: dict = {}
        row.update(self._spectral(theta, arrays))
        if self._previous is None:
            row["kernel_velocity"] = nan
        else:
            prev, prev_time = self._previous
            dt = time - prev_time
            row["kernel_velocity"] = geometry.kernel_velocity(theta, prev, dt) if dt > 0 else nan
        self._previous = (theta, time)
        if ck is not None:
            row.update(self._conjugate_kernel(ck))
        if theta_layers is not None:
            row.update(self._layers(theta_layers.detach()))
            arrays["theta_layers"] = theta_layers.detach()
        return row, arrays

    def _alignment(self, kernel: Tensor) -> float:
        return geometry.centered_alignment(kernel, self.y) if self.y is not None else float("nan")

    def _spectral(self, theta: Tensor, arrays: dict) -> dict:
        if not self.spectra_computed(theta.shape[0]):
            return {name: float("nan") for name in SPECTRAL_COLUMNS}
        spec = geometry.spectrum(theta)
        arrays["eigvals"] = spec.eigvals
        u_t = spec.top(self.top_k)
        if self._u_0 is None:
            self._u_0 = u_t
            if self.theta_inf is not None:
                self._u_inf = geometry.spectrum(self.theta_inf.to(theta.device)).top(self.top_k)
        return {
            "eff_rank": geometry.effective_rank(spec.eigvals),
            "top_eig_share": geometry.top_eig_share(spec.eigvals),
            "eig_overlap_init": geometry.eigenspace_overlap(u_t, self._u_0),
            "eig_overlap_inf": (geometry.eigenspace_overlap(u_t, self._u_inf)
                                if self._u_inf is not None else float("nan")),
            "target_power_topk": (geometry.target_power_topk(u_t, self.y)
                                  if self.y is not None else float("nan")),
        }

    def _conjugate_kernel(self, ck: Tensor) -> dict:
        if self._ck_0 is None:
            self._ck_0 = ck
            self._ck_norm_0 = geometry.frobenius_norm(ck)
            if self.nngp_inf is not None:
                self.nngp_inf = self.nngp_inf.to(ck.device)
                self._nngp_norm = geometry.frobenius_norm(self.nngp_inf)
        err = (geometry.relative_distance(ck, self.nngp_inf, self._nngp_norm)
               if self.nngp_inf is not None else float("nan"))
        return {"ck_kappa": geometry.relative_distance(ck, self._ck_0, self._ck_norm_0),
                "nngp_err_inf": err}

    def _layers(self, layers: Tensor) -> dict:
        """Per layer κ_l = ‖Θ_l,t − Θ_l,0‖/‖Θ_l,0‖, the trace share and the alignment, each a
        blockwise float64 pass over the layer's kernel (at N = 4096 these columns are
        memory-bound; no N × N float64 copy is made)."""
        if self._layers_0 is None:
            self._layers_0 = layers  # in the computed dtype: L × N × N, not twice that
            self._layer_norms_0 = [geometry.frobenius_norm(layer) for layer in layers]
        shares = geometry.trace_shares(layers)
        row = {}
        for i in range(layers.shape[0]):
            row[f"kappa_layer{i + 1}"] = geometry.relative_distance(
                layers[i], self._layers_0[i], self._layer_norms_0[i])
            row[f"ntk_share_layer{i + 1}"] = shares[i].item()
            row[f"alignment_layer{i + 1}"] = self._alignment(layers[i])
        return row


def readout_conjugate_kernel(model: nn.Module, theta_readout: Tensor) -> Optional[Tensor]:
    """The conjugate kernel of an MLP from its readout layer's NTK block, in O(N²).

    The readout's output sensitivity is the identity, so its block of Θ (trace mode) is
    exactly Θ_{L+1} = α²(m_W² ΦΦᵀ + m_b²) with Φ the readout's input features: hence
    ΦΦᵀ = (Θ_{L+1}/α² − m_b²)/m_W² and CK = σ_w² ΦΦᵀ/n + σ_b² (:func:`geometry.conjugate_kernel`)
    without a second N × N × n Gram product. Under ``ntk`` CK = Θ_{L+1}/α².

    Returns:
        (N, N) float64, or None for a module that is not an MLP.
    """
    mlp, alpha = unwrap_mlp(model)
    if mlp is None:
        return None
    readout = mlp.layers[-1]
    # CK = a·Θ_{L+1} + b, applied in place on one float64 copy
    scale = mlp.w_std**2 / (readout.in_features * readout.weight_multiplier**2)
    a = scale / alpha**2
    b = mlp.b_std**2 - scale * readout.bias_multiplier**2
    return theta_readout.detach().to(torch.float64, copy=True).mul_(a).add_(b)


def probe_geometry_inputs(model: nn.Module, x_probe: Tensor, memory_budget_bytes: int,
                          tracker: object = None) -> tuple[Optional[Tensor], Tensor]:
    """(Θ_{l,t} or None, the conjugate kernel) of ``model`` on the probe set.

    Per-layer kernels come from the kernel tracker's last call when it kept them (one
    features pass for everything), else from :func:`layer_kernels` (None for a module
    without the per-layer factorization). The conjugate kernel of an MLP comes from its
    readout block (:func:`readout_conjugate_kernel`); for other modules, from the readout's
    input features read by a forward hook (σ_w, σ_b of :func:`ck_scales`).
    """
    layers = getattr(tracker, "theta_layers", None)
    if layers is None:
        try:
            layers = layer_kernels(model, x_probe, memory_budget_bytes)
        except ValueError:
            layers = None
    ck = readout_conjugate_kernel(model, layers[-1]) if layers is not None else None
    if ck is None:
        w_std, b_std, _ = ck_scales(model)
        ck = geometry.conjugate_kernel(readout_features(model, x_probe), w_std, b_std)
    return layers, ck


def spectrum_note(n_probe: int, spectrum_max_probe: int) -> Optional[str]:
    """The summary's note when the spectral columns are skipped, else None."""
    if n_probe <= spectrum_max_probe:
        return None
    return (f"spectral columns ({', '.join(SPECTRAL_COLUMNS)}) and eigvals skipped: "
            f"n_probe {n_probe} > ntk.spectrum_max_probe {spectrum_max_probe} "
            f"(eigh costs O(N³) per checkpoint)")


def layers_to_store(level: str, n_probe: int, n_layers: int, n_checkpoints: int, itemsize: int,
                    planned_bytes: int, max_mb: int, explicit: bool) -> str:
    """Which Θ_{l,t} ``kernels.pt`` keeps, at the storage plan's level when it fits.

    An explicit ``ntk.store`` level is followed as it is (like Θ_t); under ``auto`` the
    per-layer kernels are kept at the plan's level only if the whole file stays under
    ``store_max_mb``, else at the first and last checkpoints if that fits, else not at all.

    Args:
        level: the plan's level for Θ_t ("all", "ends", "none").
        n_probe, n_layers, n_checkpoints: N, L and K.
        itemsize: bytes per stored entry (the dtype Θ_t is stored in).
        planned_bytes: the plan's size without the per-layer kernels.
        max_mb: ``ntk.store_max_mb``.
        explicit: the user set ``ntk.store`` to a level.

    Returns:
        "all", "ends" or "none".
    """
    if explicit or level == "none":
        return level
    per_matrix = itemsize * n_probe * n_probe * n_layers
    for candidate in (("all", "ends") if level == "all" else ("ends",)):
        kept = n_checkpoints if candidate == "all" else min(2, n_checkpoints)
        if planned_bytes + kept * per_matrix <= max_mb * 10**6:
            return candidate
    return "none"
