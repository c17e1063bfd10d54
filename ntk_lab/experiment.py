"""Build one run from a validated :class:`~ntk_lab.config.RunConfig` and execute it.

Resolves the device and dtype, builds the data and the network, computes Θ_∞ and NNGP_∞ on
the probe set once, trains with the recorder writing the run folder, and writes the summary
and the single-run figures. Plain arguments only (no Hydra).
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

import ntk_lab
from ntk_lab.training import preflight
from ntk_lab.measures.checkpoint_geometry import layers_to_store, spectrum_note
from ntk_lab.config import ConfigError, RunConfig, data_settings
from ntk_lab.config.devices import resolve_device
from ntk_lab.data import Dataset, make_dataset
from ntk_lab.models.layer_groups import trainable_layers
from ntk_lab.dynamics.kernel_flow import KernelFlow
from ntk_lab.dynamics.gradient_flow import GradientFlowPredictor
from ntk_lab.kernels.network_limit import (
    NO_LIMIT_REASON, LimitCost, format_duration, limit_unavailable,
)
from ntk_lab.kernels.structured import factor_bytes_per_sample, fully_structured
from ntk_lab.loggers import NullLogger, RunLogger
from ntk_lab.models import (
    CustomModuleError, ScaledOutput, build_network, network_inputs, token_layout,
)
from ntk_lab.models.custom import check_output_shape, check_sample_independence
from ntk_lab.training.limit_source import (
    LimitSource, estimate_source_cost, fluctuation_prediction, limit_kernels,
)
from ntk_lab.training.lr_units import absolute_learning_rate
from ntk_lab.training.optimizers import OptimizerSettings, infinite_width_support
from ntk_lab.training.velocity_prediction import kappa_rate
from ntk_lab.records import (
    STATUS_FAILED, STATUS_INTERRUPTED, STATUS_RUNNING, RunRecorder, write_summary,
)
from ntk_lab.records.storage import StoragePlan, plan_storage
from ntk_lab.training.loop import (
    Interrupted, TrainOutcome, TrainSettings, checkpoint_steps, train,
)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


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


def memory_check(config: RunConfig, data: Dataset, device: torch.device) -> preflight.MemoryCheck:
    """The run's memory preflight (:mod:`ntk_lab.training.preflight`): its estimated peak, what
    the device has free, and the one-line refusal (``.refusal``) when the first exceeds the
    second. Allocates nothing: the network is measured on the ``meta`` device."""
    dtype = DTYPES[config.precision]
    sample = data.x_train[:1].to(dtype)
    try:
        shape = preflight.run_shape(
            lambda dev: build_model(config, data, dtype, dev), sample,
            itemsize=torch.finfo(dtype).bits // 8, n_train=len(data.x_train), n_test=len(data.x_test),
            n_probe=len(data.x_probe), batch=config.train.batch_size,
            feature_bytes=lambda net: _structured_feature_bytes(net, sample))
    except ConfigError:
        raise
    except Exception as err:  # a user's module that cannot be built on the meta device
        if config.model.name != "custom":
            raise
        check = preflight.could_not_size(err, "the custom module")  # .unsized says why
    else:
        check = preflight.MemoryCheck(
            preflight.estimate_memory(shape, instrumentation(config), device.type),
            preflight.available_memory(device))
    return check


def memory_refusal(config: RunConfig, data: Dataset, device: torch.device) -> Optional[str]:
    """:func:`memory_check`'s one-line refusal, or None."""
    return memory_check(config, data, device).refusal


def instrumentation(config: RunConfig) -> preflight.Instrumentation:
    """The run's measuring settings, as the memory estimate needs them."""
    k, z = config.ntk, config.lazy
    return preflight.Instrumentation(
        ntk_enabled=k.enabled, jac_change=k.jac_change,
        n_checkpoints=len(checkpoint_steps(config.train.steps, k.checkpoints)),
        memory_budget_bytes=k.memory_budget_mb << 20, store=k.store, store_dtype=k.store_dtype,
        store_max_mb=k.store_max_mb, linearized=z.linearized,
        infinite_width=bool(z.infinite_width) and k.enabled, kappa_hessian=z.kappa_hessian and k.enabled,
        centered=config.model.center,
        optimizer_states={"sgd": 0, "momentum": 1, "adam": 2}[config.train.optimizer])


def _structured_feature_bytes(net: torch.nn.Module, sample: torch.Tensor) -> Optional[int]:
    """Factor bytes per probe point when every layer has structured factors, else None."""
    if not fully_structured(net):
        return None
    return factor_bytes_per_sample(net, sample.to(next(net.parameters()).device))


def build_model(config: RunConfig, data: Dataset, dtype: torch.dtype, device) -> torch.nn.Module:
    """The network of ``config.model`` (mlp, cnn, resmlp, transformer, custom) for ``data`` (as
    :func:`ntk_lab.models.network_inputs` shaped it), α-scaled when ``output_scale`` ≠ 1 or
    centered."""
    m = config.model
    out_dim = data.out_dim if m.out_dim is None else m.out_dim
    if out_dim != data.out_dim:
        raise ConfigError(f"model.out_dim={m.out_dim} is invalid: the {data.name} data has "
                          f"{data.out_dim} target column(s); use null or {data.out_dim}")
    # on the meta device (the memory estimate) there are no values to draw: skip the seeded
    # generator, which walks every element even there (seconds at width 10⁸)
    seed = None if torch.device(device).type == "meta" else config.train.seed
    if m.name == "transformer":  # tokens from these data? (patch size, sequence shape): one line
        try:
            token_layout(m.spec(), tuple(data.x_train.shape[1:]))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    try:
        net = build_network(m.spec(), tuple(data.x_train.shape[1:]), out_dim, seed=seed,
                            dtype=dtype, device=device)
    except CustomModuleError as err:
        raise ConfigError(str(err)) from None
    if m.output_scale != 1.0 or m.center:
        return ScaledOutput(net, m.output_scale, m.center)
    return net


# A step estimated to take longer than this is announced in one line and gets a progress bar.
ANNOUNCE_ABOVE_S = 2.0
COST_LABELS = {"theta_inf_probe": "Θ_∞ on the probe set",
               "prediction_kernels": "the infinite-width prediction's kernels"}


def limit_costs(config: RunConfig, data: Dataset, prediction: bool) -> dict[str, LimitCost]:
    """The estimated cost of each Θ_∞ computation of the run (kernels.network_limit): on the
    probe set (upper triangle) and, when the run makes the prediction (``prediction``),
    between train + test and train. ``data`` as the network takes it (images for a CNN)."""
    spec, costs = config.model.spec(), {}
    n_probe, n_train, n_test = len(data.x_probe), len(data.x_train), len(data.x_test)
    source, out = limit_source(config), data.out_dim
    probe = estimate_source_cost(spec, data.x_probe, [(n_probe, n_probe, True)], source=source,
                                 out_dim=out)
    if probe is not None:
        costs["theta_inf_probe"] = probe
    if prediction:  # the blocks infinite_width_predictor computes: train×train (symmetric), test×train
        limit_s = 60.0 * config.lazy.max_minutes if config.lazy.infinite_width == "auto" else None
        blocks = [(n_train, n_train, True), (n_test, n_train, False)]
        prediction = estimate_source_cost(spec, data.x_train, blocks, source=source, out_dim=out,
                                          confirm_above=limit_s)
        if prediction is not None:
            costs["prediction_kernels"] = prediction
    for name, cost in costs.items():
        if cost.seconds > ANNOUNCE_ABOVE_S:
            print(f"ntk_lab: {COST_LABELS[name]}: {cost.describe()} (estimated)")
    return costs


def prediction_skipped(config: RunConfig, costs: dict[str, LimitCost]) -> Optional[str]:
    """Why ``lazy.infinite_width=auto`` skips the prediction (its kernels' estimate exceeds
    ``lazy.max_minutes``), else None."""
    cost = costs.get("prediction_kernels")
    if config.lazy.infinite_width != "auto" or cost is None:
        return None
    if cost.seconds <= config.lazy.max_minutes * 60:
        return None
    cheaper = "fewer data.n_train / data.n_test"
    if config.model.name == "cnn" and config.model.readout == "gap":
        cheaper = "model.readout=flatten or " + cheaper
    return (f"lazy.infinite_width=auto skipped the infinite-width prediction: its kernels would "
            f"take {cost.describe()}, more than lazy.max_minutes={config.lazy.max_minutes:g}; "
            f"lazy.infinite_width=true forces it, {cheaper} make it cheaper")


def limit_source(config: RunConfig) -> LimitSource:
    """Θ_∞ from the closed form, or (``lazy.infinite_width=monte_carlo``) a Monte-Carlo estimate."""
    return LimitSource(config.lazy.infinite_width == "monte_carlo", config.ntk.mc_width,
                       config.ntk.mc_samples)


def probe_kernels(config: RunConfig, data: Dataset, progress: bool = False
                  ) -> tuple[dict[str, torch.Tensor], Optional[dict]]:
    """Probe inputs, NNGP_∞ and Θ_∞ (float64) on them, Θ_∞ scaled by α² like the network; and
    the Monte-Carlo estimate's record (None for the closed form)."""
    m = config.model
    x = data.x_probe.to(torch.float64)
    limit = limit_kernels(m.spec(), x, source=limit_source(config), out_dim=data.out_dim,
                          progress=progress)
    if limit is None:  # no closed form: NaN, the reason in summary.json (limit_unavailable)
        limit = (torch.full((len(x), len(x)), float("nan"), dtype=torch.float64),) * 2 + (None,)
    nngp, ntk, record = limit
    kernels = {"probe_x": data.x_probe, "nngp_inf": nngp, "theta_inf": ntk * m.output_scale**2}
    if data.probe_angle is not None:
        kernels["probe_angle"] = data.probe_angle
    return kernels, record


def optimizer_settings(config: RunConfig, lr: Optional[float] = None) -> OptimizerSettings:
    """The :class:`~ntk_lab.training.optimizers.OptimizerSettings` of ``config.train``, at the
    absolute learning rate ``lr`` (default ``train.lr``; see ``train.lr_unit``)."""
    t = config.train
    return OptimizerSettings(t.optimizer, lr=t.lr if lr is None else lr, momentum=t.momentum,
                             weight_decay=t.weight_decay,
                             betas=t.betas, eps=t.eps, schedule=t.schedule)


def infinite_width_predictor(config: RunConfig, data: Dataset,
                             progress: bool = False) -> GradientFlowPredictor | KernelFlow:
    """Θ_∞ gradient flow on the train and test sets (float64, on the data's device): the MSE
    closed form for gradient descent, else the integrated flow of :mod:`ntk_lab.dynamics.kernel_flow`
    (cross-entropy; momentum's second-order equation).

    The dynamics are driven by Θ·loss_scale; for an α-scaled network that is α²Θ_∞/α² = Θ_∞,
    so the unscaled Θ_∞ is used whatever α.
    """
    spec, source = config.model.spec(), limit_source(config)
    x_train, x_test = data.x_train.to(torch.float64), data.x_test.to(torch.float64)
    # only the two blocks the flow uses, each once; train×train by its upper triangle
    _, train_train, _ = limit_kernels(spec, x_train, source=source, out_dim=data.out_dim,
                                      progress=progress)
    _, test_train, _ = limit_kernels(spec, x_test, x_train, source=source, out_dim=data.out_dim,
                                     progress=progress)
    y = data.y_train.to(torch.float64)
    t = config.train
    if t.loss == "mse" and t.optimizer == "sgd":
        return GradientFlowPredictor(train_train, test_train, y)
    momentum = t.momentum if t.optimizer == "momentum" else 0.0
    return KernelFlow(train_train, test_train, y, loss=t.loss, momentum=momentum, lr=t.lr)


def _summary(config: RunConfig, status: str, message: str, started: float, **extra) -> dict:
    return {**config.flat(), "status": status, "message": message,
            "wall_time_s": time.time() - started, "versions": versions(), **extra}


def run_experiment(
    config: RunConfig, run_dir: Path, *, stop_requested: Callable[[], bool] = lambda: False,
    started: Optional[float] = None, job_num: Optional[int] = None,
    logger: Optional[RunLogger] = None,
) -> TrainOutcome:
    """Train one network as ``config`` says and write its run folder (docs/conventions.md, *Output files*).

    ``logger`` (:mod:`ntk_lab.loggers`) gets the settings, every checkpoint row and, at the
    end, the summary and figures; the run folder is written the same with or without it.

    Raises:
        ConfigError: settings the data cannot satisfy, or a run whose estimated memory does
            not fit the device (raised before the network is allocated).
    """
    started = time.time() if started is None else started
    run_dir = Path(run_dir)
    device = resolve_device(config.device, job_num)
    dtype = DTYPES[config.precision]
    torch.manual_seed(config.train.seed)
    data = network_inputs(config.model.name, make_dataset(config.data.name, **data_settings(config.data)))
    memory = memory_check(config, data, device)
    if memory.refusal:
        raise ConfigError(memory.refusal)
    model = build_model(config, data, dtype, device)
    kernels_on = config.ntk.enabled
    plan = plan_storage(len(data.x_probe), len(checkpoint_steps(config.train.steps, config.ntk.checkpoints)),
                        dtype, store=config.ntk.store, store_dtype=config.ntk.store_dtype,
                        max_mb=config.ntk.store_max_mb) if kernels_on else StoragePlan("none", None, None, 0)
    monte_carlo = config.lazy.infinite_width == "monte_carlo"
    no_limit = None if monte_carlo else limit_unavailable(config.model.spec(), data.x_probe)
    predicts = bool(config.lazy.infinite_width) and no_limit is None \
        and not infinite_width_support(optimizer_settings(config))
    costs = limit_costs(config, data, predicts) if kernels_on else {}
    skipped = prediction_skipped(config, costs) if predicts else None
    if skipped:  # said before the probe set's Θ_∞, which may itself take a while
        print(f"ntk_lab: warning: {skipped}", file=sys.stderr)
    long_ = {name: config.progress and cost.seconds > ANNOUNCE_ABOVE_S for name, cost in costs.items()}
    static, limit_record = (probe_kernels(config, data, progress=long_.get("theta_inf_probe", False))
                            if kernels_on else ({"probe_x": data.x_probe}, None))
    if data.y_probe is not None:
        static["probe_y"] = data.y_probe
    data = data.to(dtype, device)
    config.model.out_dim = data.out_dim
    config.device = str(device)
    loss_scale = 1.0 / config.model.output_scale**2
    lr, lr_notes = absolute_learning_rate(config.train.lr_unit, config.train.lr, model, data.x_train,
                                          loss_scale)
    notes = {"kernel_store": plan.level, "memory_preflight": memory.record(), **lr_notes,
             **custom_module_notes(config, model, data)}
    no_prediction = infinite_width_support(optimizer_settings(config))
    if no_prediction and config.lazy.infinite_width and kernels_on:
        notes["infinite_width"] = no_prediction  # the reason for the NaN inf_* columns
    if no_limit:  # no Θ_∞ (a custom module, a layer without a closed form): no prediction either
        no_prediction = no_limit
        notes["theta_inf"] = no_limit
    if limit_record is not None:
        notes["theta_inf"] = limit_record
    if skipped:
        notes["infinite_width"] = no_prediction = skipped
    if costs:
        notes["cost_estimates"] = {name: {"seconds": round(cost.seconds, 3), "pairs": cost.pairs,
                                          "as_text": format_duration(cost.seconds)}
                                   for name, cost in costs.items()}
    err_pred = kappa_rate_value = None
    if not kernels_on:
        notes["kernels"] = "off (ntk.enabled=false): no empirical NTK, no Θ_∞ and no metric built on them"
    else:  # how far Θ_0 should be from Θ_∞ at this width (the NTK's 1/n variance)
        err_pred, why_not = fluctuation_prediction(
            config.model.spec(), static["probe_x"], static["theta_inf"] / config.model.output_scale**2,
            data.out_dim, limit_source(config))
        notes["ntk_err_inf_pred"] = err_pred if err_pred is not None else why_not
        kappa_rate_value, why_not = kappa_rate(  # how fast Θ should move at the start (its 1/n velocity)
            config.model.spec(), data.x_probe, data.x_train, data.y_train, out_dim=data.out_dim,
            loss=config.train.loss, optimizer=optimizer_settings(config, lr), batch_size=config.train.batch_size,
            output_scale=config.model.output_scale, center=config.model.center,
            monte_carlo=limit_source(config).monte_carlo)
        notes["kappa_pred"] = (f"{kappa_rate_value!r} × time" if kappa_rate_value is not None else why_not)
    notes.update(geometry_notes(config, plan, model, len(data.x_probe), dtype))
    write_summary(run_dir, _summary(config, STATUS_RUNNING, "", started, **notes))
    logger = logger or NullLogger()

    recorder = RunRecorder(run_dir, static, plan, on_row=logger.log_row,
                           layers_level=notes.get("layer_kernel_store", "none"))
    settings = TrainSettings(
        steps=config.train.steps, lr=lr, batch_size=config.train.batch_size,
        checkpoints=config.ntk.checkpoints, ntk_method=config.ntk.method,
        memory_budget_bytes=config.ntk.memory_budget_mb << 20, seed=config.train.seed,
        record_jac_change=config.ntk.jac_change, progress=config.progress,
        track_linearized=config.lazy.linearized, kappa_hessian=config.lazy.kappa_hessian,
        hessian_points=config.lazy.hessian_points, hessian_iters=config.lazy.hessian_iters,
        ntk_enabled=kernels_on, loss=config.train.loss, optimizer=optimizer_settings(config, lr),
        parameterization=config.model.parameterization,
        infinite_width_note=notes.get("infinite_width", ""), top_k=config.ntk.top_k,
        spectrum_max_probe=config.ntk.spectrum_max_probe,
        lambda_max=config.ntk.lambda_max is True or (
            config.ntk.lambda_max == "auto" and config.train.lr_unit == "crit"),
        ntk_err_inf_pred=err_pred, kappa_pred_rate=kappa_rate_value if kernels_on else None,
    )
    if not kernels_on:
        settings.record_jac_change = settings.kappa_hessian = False
    theta_inf = static["theta_inf"].to(device) if kernels_on else None
    infinite = (infinite_width_predictor(config, data, progress=long_.get("prediction_kernels", False))
                if config.lazy.infinite_width and kernels_on and not no_prediction else None)
    nngp_inf = static["nngp_inf"].to(device) if kernels_on else None
    logger.start(config.flat())
    try:
        try:
            outcome = train(model, data, settings, recorder, theta_inf=theta_inf,
                            loss_scale=loss_scale, infinite=infinite,
                            nngp_inf=nngp_inf, stop_requested=stop_requested)
        except Interrupted as stop:  # the rows reached and their kernels are kept
            rows = recorder.rows
            outcome = TrainOutcome(STATUS_INTERRUPTED, rows=list(rows),
                                   last_step=int(rows[-1]["step"]) if rows else 0,
                                   message=f"stopped by {stop.name} during training, after step "
                                           f"{int(rows[-1]['step']) if rows else 0}")
        final = outcome.rows[-1] if outcome.rows else {}
        summary = _summary(config, outcome.status, outcome.message, started,
                           diverged_step=outcome.diverged_step, last_step=outcome.last_step,
                           final=final, **notes)
        recorder.finish(summary)
        _draw_run_figures(run_dir)
    except BaseException as err:  # the tracker's run ends as failed too; run.py records it
        logger.finish({"status": STATUS_FAILED, "message": f"{type(err).__name__}: {err}"},
                      run_dir)
        raise
    logger.finish(summary, run_dir)
    return outcome


def custom_module_notes(config: RunConfig, model: torch.nn.Module, data: Dataset) -> dict:
    """For ``model=custom``: check the output shape and whether samples mix (BatchNorm in
    training mode: the run then uses eval-mode statistics), and say so for summary.json."""
    if config.model.name != "custom":
        return {}
    target = config.model.target
    try:
        check_output_shape(model, data.x_train, data.out_dim, target)
        mixing = check_sample_independence(model, data.x_train, target)
    except CustomModuleError as err:
        raise ConfigError(str(err)) from None
    notes = {"theta_inf": NO_LIMIT_REASON}
    notes["sample_mixing"] = mixing or "none detected (one sample's outputs do not depend on the others)"
    return notes


def geometry_notes(config: RunConfig, plan: StoragePlan, model: torch.nn.Module, n_probe: int,
                   dtype: torch.dtype) -> dict[str, str]:
    """summary.json notes of the checkpoint geometry: which per-layer kernels kernels.pt keeps
    (``layer_kernel_store``) and why spectra are skipped, if they are."""
    if not config.ntk.enabled:
        return {"layer_kernel_store": "none"}
    n_checkpoints = len(checkpoint_steps(config.train.steps, config.ntk.checkpoints))
    itemsize = torch.finfo(plan.theta_dtype or dtype).bits // 8
    notes = {"layer_kernel_store": layers_to_store(
        plan.level, n_probe, len(trainable_layers(model)), n_checkpoints, itemsize, plan.bytes,
        config.ntk.store_max_mb, explicit=config.ntk.store != "auto")}
    skipped = spectrum_note(n_probe, config.ntk.spectrum_max_probe)
    if skipped:
        notes["spectrum"] = skipped
    return notes


def _draw_run_figures(run_dir: Path) -> None:
    from ntk_lab.analysis.run_figures import draw_run_figures

    draw_run_figures(run_dir)


def record_failure(config: RunConfig, run_dir: Path, message: str, started: float) -> None:
    """Mark a run that raised as ``failed`` (its metrics.csv keeps the rows it reached)."""
    write_summary(run_dir, _summary(config, STATUS_FAILED, message, started))


def record_interruption(config: RunConfig, run_dir: Path, stop: Interrupted, started: float) -> None:
    """Mark a run that a signal stopped before training began as ``interrupted``."""
    write_summary(run_dir, _summary(config, STATUS_INTERRUPTED,
                                    f"stopped by {stop.name} before training began", started))


def preflight_refusal(config: RunConfig, job_num: Optional[int] = None) -> Optional[str]:
    """For a sweep's check before any job starts: build the job's data (small) and return the
    memory refusal :func:`run_experiment` would raise, or None. Data sets are cached across the
    jobs of one sweep.

    Raises:
        ConfigError, DataError: settings the data cannot satisfy.
    """
    key = (config.data.name, tuple(sorted(data_settings(config.data).items())))
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = make_dataset(config.data.name, **data_settings(config.data))
    data = network_inputs(config.model.name, _DATA_CACHE[key])
    return memory_refusal(config, data, resolve_device(config.device, job_num))


_DATA_CACHE: dict = {}
