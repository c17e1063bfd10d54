"""The training loop: full-batch gradient descent (or mini-batch SGD) on the MSE loss, with the
empirical NTK and the drift metrics recorded at log-spaced checkpoint steps.

Loss (docs/conventions.md): L(θ) = 1/(2N) Σ_i ‖f(x_i) − y_i‖² (or softmax cross-entropy,
:mod:`ntk_lab.training.losses`), divided by α² when the network is an α-scaled
:class:`~ntk_lab.models.ScaledOutput` (Chizat et al. 2019). The optimizer (sgd, momentum,
adam) and schedule come from :mod:`ntk_lab.training.optimizers`. Time is t = Σ_{k<step} η_k (η·step at a
constant learning rate). Classification data also get ``train_acc`` and ``test_acc``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ntk_lab.measures import drift as metrics
from ntk_lab.measures.checkpoint_geometry import (
    DEFAULT_SPECTRUM_MAX_PROBE, DEFAULT_TOP_K, CheckpointGeometry, ck_scales, probe_geometry_inputs,
)
from ntk_lab.data import Dataset
from ntk_lab.training.lr_units import lambda_max_columns
from ntk_lab.training.losses import accuracy, loss_function, mse_loss
from ntk_lab.training.optimizers import (
    OptimizerSettings, build_optimizer, build_scheduler, elapsed_time,
)
from ntk_lab.measures.hessian import kappa_hessian
from ntk_lab.kernels.tracker import ProbeKernelTracker
from ntk_lab.dynamics.kernel_flow import KernelFlow
from ntk_lab.dynamics.gradient_flow import GradientFlowPredictor
from ntk_lab.dynamics.linearized import LinearizedModel
from ntk_lab.models import parameter_layers
from ntk_lab.records import STATUS_DIVERGED, STATUS_INTERRUPTED, STATUS_OK


@dataclass
class TrainSettings:
    """Plain training settings (validated in :mod:`ntk_lab.config`).

    Attributes:
        steps: number of gradient steps T.
        lr: learning rate η.
        batch_size: None for full-batch GD, else the mini-batch size of SGD.
        checkpoints: how many log-spaced checkpoint steps (0 and T always included).
        ntk_method: empirical NTK method ("auto", "jacrev", "ntvp", "structured").
        memory_budget_bytes: cap on Jacobian-sized intermediates.
        seed: seeds the mini-batch order.
        record_jac_change: compute ``jac_change`` (needs a frozen copy of θ₀).
        progress: show a tqdm bar.
        track_linearized: train the linearized network alongside (``lin_gap``, losses).
        kappa_hessian: at the last step, the Hessian κ of Liu, Zhu & Belkin 2020 on the first
            ``hessian_points`` probe points with ``hessian_iters`` power iterations.
        ntk_enabled: False trains and logs losses and parameter changes only — no empirical
            kernel, no Jacobian change (the baseline the instrumentation's cost is measured
            against).
        loss: ``mse`` or ``cross_entropy``.
        optimizer: optimizer, weight decay and schedule; None is plain SGD at ``lr``.
        parameterization: the network's (μP Adam rescales per-tensor learning rates).
        infinite_width_note: why there is no Θ_∞ prediction for these settings ('' if there
            is one); when set, the prediction's columns are recorded as NaN.
        top_k: k of the top-k eigenspace columns (``eig_overlap_*``, ``target_power_topk``).
        spectrum_max_probe: the largest probe set whose spectrum is computed at checkpoints.
        lambda_max: record ``lambda_max_train`` = λ_max(Θ_t/N) on the training set and
            ``eta_lambda`` = η·λ_max at every checkpoint (:mod:`ntk_lab.training.lr_units`).
        ntk_err_inf_pred: the column of that name (the predicted ‖Θ_0 − Θ_∞‖_F/‖Θ_∞‖_F at
            this width), or None for no column.
        kappa_pred_rate: the column ``kappa_pred`` = this rate × time (the small-t κ the theory
            predicts, :mod:`ntk_lab.training.velocity_prediction`), or None for no column.
    """

    steps: int = 200
    lr: float = 1.0
    batch_size: Optional[int] = None
    checkpoints: int = 20
    ntk_method: str = "auto"
    memory_budget_bytes: int = 1 << 30
    seed: int = 0
    record_jac_change: bool = True
    progress: bool = True
    track_linearized: bool = False
    kappa_hessian: bool = False
    hessian_points: int = 8
    hessian_iters: int = 30
    ntk_enabled: bool = True
    loss: str = "mse"
    optimizer: Optional[OptimizerSettings] = None
    parameterization: str = "ntk"
    infinite_width_note: str = ""
    top_k: int = DEFAULT_TOP_K
    spectrum_max_probe: int = DEFAULT_SPECTRUM_MAX_PROBE
    lambda_max: bool = False
    ntk_err_inf_pred: Optional[float] = None
    kappa_pred_rate: Optional[float] = None

    def optimizer_settings(self) -> OptimizerSettings:
        return self.optimizer or OptimizerSettings("sgd", lr=self.lr)

    def time(self, step: int) -> float:
        """t = Σ_{k<step} η_k."""
        o = self.optimizer_settings()
        return elapsed_time(o.schedule, self.lr, step, self.steps)


Predictor = GradientFlowPredictor | KernelFlow  # the Θ_∞ model: MSE closed form, or the integrated flow


class Recorder(Protocol):
    """Receives one row of metrics and Θ_t (N_probe, N_probe) at every checkpoint (None when
    kernels are off, or when the row records a divergence), and the checkpoint's arrays
    (``eigvals``, ``theta_layers``: :mod:`ntk_lab.measures.checkpoint_geometry`) when there are any."""

    def checkpoint(self, row: dict, theta: Optional[Tensor], arrays: Optional[dict] = None) -> None: ...


class Interrupted(BaseException):
    """A signal (SIGINT, SIGTERM) asked the run to stop, wherever it was.

    Raised by the command line's signal handler, so that a run stops within moments even in
    the middle of Θ_∞, a kernel computation or data loading; a BaseException, so that no
    ``except Exception`` on the way swallows it. The runner records the run as
    ``interrupted``, with every file written so far intact.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        import signal

        return signal.Signals(self.signum).name


@dataclass
class TrainOutcome:
    """How training ended: ``status`` ok / diverged / interrupted, with a message."""

    status: str
    message: str = ""
    diverged_step: Optional[int] = None
    last_step: int = 0
    rows: list = field(default_factory=list)


def checkpoint_steps(steps: int, count: int) -> list[int]:
    """Log-spaced steps in [0, steps], always with 0 and ``steps``; about ``count`` of them."""
    if steps <= 0:
        return [0]
    inner = np.unique(np.round(np.logspace(0, math.log10(steps), max(count - 1, 1))).astype(int))
    return sorted({0, steps, *[int(s) for s in inner if 0 < s <= steps]})


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in model.named_parameters() if v.requires_grad}


def _batches(n: int, batch_size: Optional[int], seed: int, device) -> Callable[[], Optional[Tensor]]:
    """A function giving the next mini-batch's indices (None: the full batch)."""
    if batch_size is None or batch_size >= n:
        return lambda: None
    g = torch.Generator().manual_seed(seed)
    queue: list[Tensor] = []

    def next_batch() -> Tensor:
        if not queue:  # a fresh permutation each epoch, drawn on the CPU for reproducibility
            queue.extend(torch.randperm(n, generator=g).split(batch_size))
        return queue.pop(0).to(device)

    return next_batch


class _Checkpointer:
    """Evaluates the row of metrics at a checkpoint against the state at step 0.

    Each checkpoint does one forward pass over the training and test inputs together (losses,
    the lazy comparisons), one pass over the parameters (every ``param_change`` column, and
    the check that they are finite), and — when kernels are on — one structured features pass
    over the probe set (Θ_t and ``jac_change``, :class:`ProbeKernelTracker`).
    """

    def __init__(self, model: nn.Module, data: Dataset, settings: TrainSettings,
                 theta_inf: Optional[Tensor], loss_scale: float,
                 linearized: Optional[LinearizedModel], infinite: Optional[Predictor],
                 nngp_inf: Optional[Tensor] = None):
        self.model, self.data, self.settings = model, data, settings
        self.theta_inf = theta_inf.double() if theta_inf is not None else None
        self.loss_scale = loss_scale
        self.params_0 = {k: v.detach().clone() for k, v in _trainable(model).items()}
        self.norms_0 = metrics.squared_norms(self.params_0)
        self.layer_groups = parameter_layers(model)  # per layer: its weight and bias names
        self.kernels = (ProbeKernelTracker(model, data.x_probe, method=settings.ntk_method,
                                           memory_budget_bytes=settings.memory_budget_bytes,
                                           jac_change=settings.record_jac_change, layers=True)
                        if settings.ntk_enabled else None)
        w_std, b_std, known = ck_scales(model)
        self.geometry = (CheckpointGeometry(
            data.y_probe, self.theta_inf, nngp_inf.double() if nngp_inf is not None and known else None,
            w_std=w_std, b_std=b_std, top_k=settings.top_k,
            spectrum_max_probe=settings.spectrum_max_probe) if settings.ntk_enabled else None)
        self.arrays: Optional[dict] = None  # the last row's geometry arrays, for the recorder
        # θ_0 as a module is needed only by the Hessian κ (the tracker keeps its own features)
        self.initial_model = (copy.deepcopy(model).requires_grad_(False)
                              if settings.kappa_hessian else None)
        self.theta_0: Optional[Tensor] = None  # float64
        self.loss = loss_function(settings.loss)
        self.classes = data.num_classes is not None
        self.linearized, self.infinite = linearized, infinite
        f0_train, self.f0_test = self._outputs()
        self.f0_test = self.f0_test.double()
        self.kernel_regression_loss = None
        if infinite is not None:
            infinite.set_initial(f0_train, self.f0_test)
            if hasattr(infinite, "kernel_regression"):  # MSE only: the τ → ∞ limit from f_0 = 0
                self.kernel_regression_loss = _mse64(infinite.kernel_regression(), data.y_test)

    def _outputs(self) -> tuple[Tensor, Tensor]:
        """f(x_train), f(x_test) from one forward pass over both (no graph)."""
        data = self.data
        with torch.no_grad():
            out = self.model(torch.cat([data.x_train, data.x_test]))
        return out[: len(data.x_train)], out[len(data.x_train):]

    def row(self, step: int) -> tuple[dict, Optional[Tensor], Optional[str]]:
        """(the metrics row, Θ_t or None, why training must stop or None)."""
        s, data = self.settings, self.data
        f_train, f_test = self._outputs()
        row = {
            "step": step,
            "time": s.time(step),
            "train_loss": self.loss(f_train, data.y_train).item(),
            "test_loss": self.loss(f_test, data.y_test).item(),
        }
        if self.classes:
            row["train_acc"] = accuracy(f_train, data.y_train)
            row["test_acc"] = accuracy(f_test, data.y_test)
        if not math.isfinite(row["train_loss"]):
            return row, None, f"training loss became {row['train_loss']} at step {step}"
        row.update(self._parameter_changes())
        if not math.isfinite(row["param_change"]):
            return row, None, f"a parameter became non-finite by step {step}"
        theta, self.arrays = None, None
        if self.kernels is not None:
            theta, jac_change = self.kernels(self.model)
            row.update(self._kernel_metrics(theta))
            if s.kappa_pred_rate is not None:
                row["kappa_pred"] = s.kappa_pred_rate * row["time"]
            if jac_change is not None:
                row["jac_change"] = jac_change
            layers, ck = probe_geometry_inputs(self.model, data.x_probe, s.memory_budget_bytes,
                                               self.kernels)
            columns, self.arrays = self.geometry(theta, row["time"], theta_layers=layers, ck=ck)
            row.update(columns)
        row.update(self._lazy_comparison(step, f_test.double()))
        if s.lambda_max:
            row.update(lambda_max_columns(self.model, data.x_train, s.lr, self.loss_scale))
        if s.kappa_hessian and step == s.steps:
            points = data.x_probe[: s.hessian_points]
            row["kappa_hessian"], row["hessian_norm"] = kappa_hessian(
                self.model, self.initial_model, points, iters=s.hessian_iters, seed=s.seed,
                memory_budget_bytes=s.memory_budget_bytes)
        return row, theta, None

    def _parameter_changes(self) -> dict:
        """``param_change`` and ``param_change_layer{i}`` (the parameters of layer i of
        :func:`ntk_lab.models.parameter_layers`, weight and bias together) in one pass."""
        dist = metrics.squared_distances(_trainable(self.model), self.params_0)
        row = {"param_change": metrics.relative_change(sum(dist.values()), sum(self.norms_0.values()))}
        for i, names in enumerate(self.layer_groups, start=1):
            row[f"param_change_layer{i}"] = metrics.relative_change(
                sum(dist[n] for n in names), sum(self.norms_0[n] for n in names))
        return row

    def _kernel_metrics(self, theta: Tensor) -> dict:
        theta64 = theta.double()
        if self.theta_0 is None:
            self.theta_0 = theta64
        return {
            "kappa": metrics.kappa(theta64, self.theta_0),
            "kernel_distance": metrics.kernel_distance(theta64, self.theta_0),
            "ntk_err_inf": (metrics.ntk_err_inf(theta64, self.theta_inf)
                            if self.theta_inf is not None else float("nan")),
            **({"ntk_err_inf_pred": self.settings.ntk_err_inf_pred}
               if self.settings.ntk_err_inf_pred is not None else {}),
        }

    def _lazy_comparison(self, step: int, f_nn: Tensor) -> dict:
        """Test losses of the linearized and infinite-width models and their gaps to the network:
        gap = ‖f_nn − f_other‖ / ‖f_nn − f_0‖ on the test set (NaN at step 0, where both are 0).

        ``f_nn``: the network's test outputs at this step (float64), from the shared forward."""
        if self.settings.infinite_width_note:  # e.g. Adam: no Θ_∞ prediction; the reason is in summary.json
            nan = float("nan")
            out = {"train_loss_inf": nan, "test_loss_inf": nan, "inf_gap": nan}
            return {**out, "test_acc_inf": nan} if self.classes else out
        if self.linearized is None and self.infinite is None:
            return {}
        data, out = self.data, {}
        moved = torch.linalg.norm(f_nn - self.f0_test).item()
        gap = lambda other: (torch.linalg.norm(f_nn - other).item() / moved  # noqa: E731
                             if moved > 0 else float("nan"))
        if self.linearized is not None:
            f_lin = self.linearized(data.x_test).double()
            with torch.no_grad():
                out["train_loss_lin"] = _mse64(self.linearized(data.x_train), data.y_train)
            out["test_loss_lin"] = _mse64(f_lin, data.y_test)
            out["lin_gap"] = gap(f_lin)
        if self.infinite is not None:
            train_inf, test_inf = self.infinite.at(self.settings.time(step))
            out["train_loss_inf"] = self.loss(train_inf, data.y_train.double()).item()
            out["test_loss_inf"] = self.loss(test_inf, data.y_test.double()).item()
            out["inf_gap"] = gap(test_inf)
            if self.classes:
                out["test_acc_inf"] = accuracy(test_inf, data.y_test)
            if self.kernel_regression_loss is not None:
                out["test_loss_kernel_regression"] = self.kernel_regression_loss
        return out


def _postfix(row: dict) -> dict:
    shown = {"loss": f"{row['train_loss']:.3g}"}
    if "kappa" in row:
        shown["kappa"] = f"{row['kappa']:.3g}"
    return shown


def _guarded_step(optimizer: torch.optim.Optimizer) -> Optional[str]:
    """``optimizer.step()``; the message of an arithmetic overflow, which is a divergence of
    the run (not a failure of the code), else None. torch raises "value cannot be converted to
    type float without overflow" when lr·grad leaves the parameters' dtype."""
    try:
        optimizer.step()
    except RuntimeError as err:
        if "overflow" in str(err).lower():
            return str(err).splitlines()[0]
        raise
    return None


def _mse64(pred: Tensor, target: Tensor) -> float:
    return mse_loss(pred.double(), target.double()).item()


def train(
    model: nn.Module,
    data: Dataset,
    settings: TrainSettings,
    recorder: Recorder,
    *,
    theta_inf: Optional[Tensor] = None,
    loss_scale: float = 1.0,
    infinite: Optional[Predictor] = None,
    nngp_inf: Optional[Tensor] = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> TrainOutcome:
    """Train ``model`` on ``data`` and hand a row of metrics to ``recorder`` at each checkpoint.

    Args:
        model: the network (already on its device and dtype, as is ``data``).
        data: train / test / probe tensors.
        settings: steps, lr, batch size, checkpoints, NTK method.
        recorder: receives ``(row, Θ_t)`` at every checkpoint.
        theta_inf: Θ_∞ on the probe set (N_probe, N_probe), for ``ntk_err_inf``; None skips it.
        loss_scale: the optimised loss is L·loss_scale (1/α² for α-scaled outputs).
        infinite: Θ_∞ predictor on the train and test sets (the MSE closed form, or the
            integrated flow of :mod:`ntk_lab.dynamics.kernel_flow` for cross-entropy and momentum), or None.
        nngp_inf: NNGP_∞ on the probe set, for ``nngp_err_inf``; None skips it.
        stop_requested: polled every step; True ends training as ``interrupted``.

    Returns:
        How training ended. A non-finite loss ends it as ``diverged`` at that step.
    """
    s = settings
    checkpoints = set(checkpoint_steps(s.steps, s.checkpoints))
    linearized = LinearizedModel(model) if s.track_linearized else None
    tracker = _Checkpointer(model, data, s, theta_inf, loss_scale, linearized, infinite, nngp_inf)
    optimizer = build_optimizer(model, s.optimizer_settings(), s.parameterization)
    scheduler = build_scheduler(optimizer, s.optimizer_settings().schedule, s.steps)
    loss_fn = loss_function(s.loss)
    next_batch = _batches(len(data.x_train), s.batch_size, s.seed, data.x_train.device)
    outcome = TrainOutcome(STATUS_OK)
    bar = tqdm(total=s.steps, desc="train", disable=not s.progress, leave=False, dynamic_ncols=True)
    try:
        for step in range(s.steps + 1):
            if step in checkpoints:
                row, theta, problem = tracker.row(step)
                outcome.rows.append(row)
                outcome.last_step = step
                recorder.checkpoint(row, theta, tracker.arrays)
                bar.set_postfix(_postfix(row))
                if problem is not None:
                    outcome.status, outcome.diverged_step, outcome.message = STATUS_DIVERGED, step, problem
                    break
            if step == s.steps:
                break
            if stop_requested():
                outcome.status = STATUS_INTERRUPTED
                outcome.message = f"stopped by a signal before step {step} of {s.steps}"
                break
            idx = next_batch()
            x, y = (data.x_train, data.y_train) if idx is None else (data.x_train[idx], data.y_train[idx])
            loss = loss_fn(model(x), y) * loss_scale
            if not torch.isfinite(loss):
                outcome.status = STATUS_DIVERGED
                outcome.diverged_step = step
                outcome.message = f"training loss became {loss.item()} at step {step}"
                break
            optimizer.zero_grad(set_to_none=False)  # reuse the gradient buffers: no re-allocation per step
            loss.backward()
            overflow = _guarded_step(optimizer)
            if overflow is not None:  # e.g. lr=1e308 cannot even be represented in float32
                outcome.status, outcome.diverged_step = STATUS_DIVERGED, step
                outcome.message = f"the parameter update overflowed at step {step}: {overflow}"
                break
            scheduler.step()
            if linearized is not None:  # the same batch, learning rate and loss scale
                linearized.step(x, y, s.lr, loss_scale)
            bar.update(1)
    finally:
        bar.close()
    return outcome
