"""Validation of a run's settings: the composed config (a plain nested dict) to a
:class:`~ntk_lab.config.schema.RunConfig`, or one :class:`~ntk_lab.config.schema.ConfigError`
line naming the key, the bad value and what is allowed.

``run.py`` turns the composed Hydra config into a plain nested dict and calls
:func:`validate`; no other module sees the Hydra config object. The small checkers
(``_int``, ``_float``, ``_choice``, ``_bool``) are shared with the studies' settings
(:mod:`ntk_lab.config.studies`), so every setting is reported the same way.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

from ntk_lab.layers.activations import ACTIVATIONS, get_activation
from ntk_lab.measures.checkpoint_geometry import DEFAULT_SPECTRUM_MAX_PROBE, DEFAULT_TOP_K
from ntk_lab.data import DATASETS
from ntk_lab.kernels.empirical import METHODS
from ntk_lab.loggers import LOGGERS, logger_unavailable
from ntk_lab.training.losses import LOSSES
from ntk_lab.models import MODELS, PARAMETERIZATIONS
from ntk_lab.models.cnn import PADDINGS, READOUTS
from ntk_lab.layers.attention import MECHANISMS, POS_EMBS, SCALINGS
from ntk_lab.training.lr_units import LR_UNITS
from ntk_lab.training.optimizers import OPTIMIZERS, SCHEDULES
from ntk_lab.records.storage import DEFAULT_STORE_MAX_MB, STORE_DTYPES, STORE_LEVELS

from ntk_lab.config.schema import (
    INV_SQRT_DEPTH, PRECISIONS, ConfigError, DataConfig, LazyConfig, LoggerConfig, ModelConfig, NTKConfig,
    RunConfig, TrainConfig,
)

# ----------------------------------------------------------------------------- checks
# How the user spells a key: the top-level knobs (docs/architecture.md, *Configuration*) are set as `width=…` etc.
_USER_NAMES = {"model.width": "width", "model.depth": "depth", "train.lr": "lr", "train.seed": "seed"}


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    name = _USER_NAMES.get(key, key)
    return ConfigError(f"{name}={value!r} is invalid: {allowed}")


def _get(section: Mapping[str, Any], group: str, name: str, default: Any = ...) -> Any:
    if name in section:
        value = section[name]
    elif default is not ...:
        value = default
    else:
        raise ConfigError(f"{group}.{name} is missing from the config")
    if value == "???":
        raise ConfigError(f"{_USER_NAMES.get(f'{group}.{name}', f'{group}.{name}')} must be set")
    return value


def _int(key: str, value: Any, minimum: int, optional: bool = False) -> Optional[int]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _fail(key, value, f"must be an integer >= {minimum}")
    try:
        number = float(value)
    except ValueError:
        raise _fail(key, value, f"must be an integer >= {minimum}") from None
    if not number.is_integer() or number < minimum:
        raise _fail(key, value, f"must be an integer >= {minimum}" + (" or null" if optional else ""))
    return int(number)


def _float(key: str, value: Any, check: Callable[[float], bool], allowed: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(key, value, allowed) from None
    if isinstance(value, bool) or not math.isfinite(number) or not check(number):
        raise _fail(key, value, allowed)
    return number


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _fail(key, value, f"allowed: {', '.join(allowed)}")
    return value


def _activation(value: Any) -> str:
    """A built-in activation name, or ``module.path:function`` (imported and probed now, so that a
    bad one is one line before any job starts)."""
    if isinstance(value, str) and ":" in value:
        try:
            get_activation(value)
        except ValueError as err:
            raise _fail("model.activation", value, getattr(err, "reason", str(err))) from None
        return value
    if value not in tuple(ACTIVATIONS):
        raise _fail("model.activation", value,
                    f"allowed: {', '.join(ACTIVATIONS)} or module.path:function")
    return value


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _fail(key, value, "must be true or false")


def _bool_or_auto(key: str, value: Any, *more: str) -> bool | str:
    if isinstance(value, bool) or value == "auto" or value in more:
        return value
    raise _fail(key, value, f"allowed: true, false, auto{''.join(', ' + m for m in more)}")


def _device(value: Any) -> str:
    value = str(value)
    if value in ("auto", "cpu") or value == "cuda" or (
        value.startswith("cuda:") and value[5:].isdigit()
    ):
        return value
    raise _fail("device", value, "allowed: auto, cpu, cuda, cuda:N")


# Keys of the model group every network has; a custom module receives all the others.
_GENERIC_MODEL_KEYS = ("name", "width", "depth", "out_dim", "output_scale", "center", "target")


def _model_config(model: Mapping[str, Any], g: Callable) -> ModelConfig:
    """The ``model`` group: the shared knobs, then the chosen network's own ones."""
    name = _choice("model.name", g(model, "model", "name", "mlp"), MODELS)
    m = ModelConfig(
        width=_int("model.width", g(model, "model", "width"), 1),
        depth=_int("model.depth", g(model, "model", "depth"), 1),
        activation=None, parameterization=None, w_std=None, b_std=None,
        out_dim=_int("model.out_dim", g(model, "model", "out_dim", None), 1, optional=True),
        output_scale=_float("model.output_scale", g(model, "model", "output_scale", 1.0),
                            lambda v: v > 0, "must be > 0"),
        center=_bool("model.center", g(model, "model", "center", False)),
        name=name,
    )
    if name == "custom":  # the module's own keys (activation, …) are the builder's business
        target = g(model, "model", "target", None)
        if not isinstance(target, str) or not target.strip():
            raise ConfigError("model.target must be set for model=custom: package.module:callable "
                              "(e.g. ntk_lab.examples.custom_net:build)")
        m.target = target.strip()
        m.extra = {k: v for k, v in model.items() if k not in _GENERIC_MODEL_KEYS}
        return m
    m.activation = _activation(g(model, "model", "activation"))
    m.parameterization = _choice("model.parameterization", g(model, "model", "parameterization"),
                                 PARAMETERIZATIONS)
    m.w_std = _float("model.w_std", g(model, "model", "w_std"), lambda v: v > 0, "must be > 0")
    m.b_std = _float("model.b_std", g(model, "model", "b_std"), lambda v: v >= 0, "must be >= 0")
    if name == "cnn":
        k = _int("model.kernel_size", g(model, "model", "kernel_size", 3), 1)
        if k % 2 == 0:
            raise _fail("model.kernel_size", k, "must be an odd integer >= 1 (a 'same' filter centred on its position)")
        m.kernel_size = k
        m.padding = _choice("model.padding", g(model, "model", "padding", "same"), PADDINGS)
        m.readout = _choice("model.readout", g(model, "model", "readout", "gap"), READOUTS)
    if name == "transformer":
        _transformer_keys(m, model, g)
    if name in ("resmlp", "transformer"):
        scale = g(model, "model", "branch_scale", 1.0)
        m.branch_scale = scale if scale == INV_SQRT_DEPTH else _float(
            "model.branch_scale", scale, lambda v: v >= 0, f"must be a number >= 0 or {INV_SQRT_DEPTH}")
    return m


def _transformer_keys(m: ModelConfig, model: Mapping[str, Any], g: Callable) -> None:
    """The transformer's own keys (configs/model/transformer.yaml)."""
    m.heads = _int("model.heads", g(model, "model", "heads", 1), 1)
    if m.width % m.heads:
        divisors = [k for k in range(1, min(m.width, 64) + 1) if m.width % k == 0]
        raise _fail("model.heads", m.heads, f"must divide the width {m.width}; allowed: "
                    f"{', '.join(map(str, divisors))}")
    m.qk_std = _float("model.qk_std", g(model, "model", "qk_std", 1.0), lambda v: v > 0, "must be > 0")
    m.scaling = _choice("model.scaling", g(model, "model", "scaling", "linear"), SCALINGS)
    m.mechanism = _choice("model.mechanism", g(model, "model", "mechanism", "softmax"), MECHANISMS)
    m.layer_norm = _bool("model.layer_norm", g(model, "model", "layer_norm", True))
    m.pos_emb = _choice("model.pos_emb", g(model, "model", "pos_emb", "none"), POS_EMBS)
    m.pos_std = _float("model.pos_std", g(model, "model", "pos_std", 1.0), lambda v: v >= 0, "must be >= 0")
    m.readout = _choice("model.readout", g(model, "model", "readout", "gap"), READOUTS)
    m.patch_size = _int("model.patch_size", g(model, "model", "patch_size", None), 1, optional=True)


def validate(cfg: Mapping[str, Any]) -> RunConfig:
    """Check every setting of a composed config (a plain nested dict) and type it.

    Raises:
        ConfigError: one line naming the key, its value and what is allowed.
    """
    model, data, train, ntk, lazy = (
        cfg.get(g) or {} for g in ("model", "data", "train", "ntk", "lazy"))
    g = lambda section, group, name, *d: _get(section, group, name, *d)  # noqa: E731
    m = _model_config(model, g)
    d = DataConfig(
        name=_choice("data.name", g(data, "data", "name"), DATASETS),
        n_train=_int("data.n_train", g(data, "data", "n_train", None), 1, optional=True),
        n_test=_int("data.n_test", g(data, "data", "n_test", None), 1, optional=True),
        n_probe=_int("data.n_probe", g(data, "data", "n_probe"), 2),
        seed=_int("data.seed", g(data, "data", "seed", 0), 0),
        path=g(data, "data", "path", None),
        in_dim=_int("data.in_dim", g(data, "data", "in_dim", None), 1, optional=True),
        noise=_float("data.noise", g(data, "data", "noise", 0.0), lambda v: v >= 0, "must be >= 0"),
    )
    if d.name == "file" and not d.path:
        raise ConfigError("data.path must be set for data=file (a .npz with arrays x, y or a .csv)")
    t = TrainConfig(
        steps=_int("train.steps", g(train, "train", "steps"), 0),
        lr=_float("train.lr", g(train, "train", "lr"), lambda v: v > 0, "must be a number > 0"),
        batch_size=_int("train.batch_size", g(train, "train", "batch_size", None), 1, optional=True),
        seed=_int("train.seed", g(train, "train", "seed"), 0),
        **_optimizer_settings(train, g),
    )
    _image_data_settings(d, data, g, t)
    k = NTKConfig(
        enabled=_bool("ntk.enabled", g(ntk, "ntk", "enabled", True)),
        method=_choice("ntk.method", g(ntk, "ntk", "method"), METHODS),
        checkpoints=_int("ntk.checkpoints", g(ntk, "ntk", "checkpoints"), 2),
        memory_budget_mb=_int("ntk.memory_budget_mb", g(ntk, "ntk", "memory_budget_mb", 1024), 1),
        jac_change=_bool("ntk.jac_change", g(ntk, "ntk", "jac_change", True)),
        store=_choice("ntk.store", g(ntk, "ntk", "store", "auto"), STORE_LEVELS),
        store_dtype=_choice("ntk.store_dtype", g(ntk, "ntk", "store_dtype", "auto"), STORE_DTYPES),
        store_max_mb=_int("ntk.store_max_mb", g(ntk, "ntk", "store_max_mb", DEFAULT_STORE_MAX_MB), 1),
        top_k=_int("ntk.top_k", g(ntk, "ntk", "top_k", DEFAULT_TOP_K), 1),
        spectrum_max_probe=_int("ntk.spectrum_max_probe",
                                g(ntk, "ntk", "spectrum_max_probe", DEFAULT_SPECTRUM_MAX_PROBE), 0),
        lambda_max=_bool_or_auto("ntk.lambda_max", g(ntk, "ntk", "lambda_max", "auto")),
        mc_width=_int("ntk.mc_width", g(ntk, "ntk", "mc_width", None), 1, optional=True),
        mc_samples=_int("ntk.mc_samples", g(ntk, "ntk", "mc_samples", 16), 2),
    )
    z = LazyConfig(
        linearized=_bool("lazy.linearized", g(lazy, "lazy", "linearized", False)),
        infinite_width=_bool_or_auto("lazy.infinite_width",
                                     g(lazy, "lazy", "infinite_width", "auto"), "monte_carlo"),
        kappa_hessian=_bool("lazy.kappa_hessian", g(lazy, "lazy", "kappa_hessian", False)),
        hessian_points=_int("lazy.hessian_points", g(lazy, "lazy", "hessian_points", 8), 1),
        hessian_iters=_int("lazy.hessian_iters", g(lazy, "lazy", "hessian_iters", 30), 1),
        max_minutes=_float("lazy.max_minutes", g(lazy, "lazy", "max_minutes", 5.0),
                           lambda v: v > 0, "must be a number of minutes > 0"),
    )
    if t.lr_unit == "crit" and (t.loss, t.optimizer) != ("mse", "sgd"):
        raise ConfigError(f"train.lr_unit=crit is invalid with train.loss={t.loss} "
                          f"train.optimizer={t.optimizer}: the critical rate 2/λ_max(Θ_0/N) is that "
                          f"of gradient descent on MSE; set train.lr_unit=absolute, or "
                          f"train.loss=mse train.optimizer=sgd")
    plain_gd = (t.loss, t.optimizer, t.schedule, t.weight_decay) == ("mse", "sgd", "constant", 0.0)
    if z.linearized and not plain_gd:
        raise ConfigError(f"lazy.linearized=true is invalid with train.loss={t.loss} "
                          f"train.optimizer={t.optimizer} train.schedule={t.schedule} "
                          f"train.weight_decay={t.weight_decay}: the linearized model is trained "
                          f"by plain gradient descent on MSE only; set lazy.linearized=false")
    if t.optimizer == "adam" and m.parameterization == "mup" and m.name == "custom":
        raise ConfigError("train.optimizer=adam with model.parameterization=mup is invalid for "
                          "model=custom: μP Adam's per-layer learning rates are defined for "
                          "model=mlp|cnn|resmlp; use parameterization=ntk or standard")
    return RunConfig(
        model=m, data=d, train=t, ntk=k, lazy=z, logger=logger_config(cfg.get("logger") or {}),
        precision=_choice("precision", cfg.get("precision", "float32"), PRECISIONS),
        device=_device(cfg.get("device", "auto")),
        resume=_bool("resume", cfg.get("resume", False)),
        progress=_bool("progress", cfg.get("progress", True)),
    )


def logger_config(section: Mapping[str, Any]) -> LoggerConfig:
    """The ``logger`` group (a plain dict); a tracker whose package is missing is refused
    here, in one line naming the pip extra, before any job starts.

    Raises:
        ConfigError: an invalid value or a missing package.
    """
    config = LoggerConfig(
        name=_choice("logger", section.get("name", "none"), LOGGERS),
        tracking_uri=_optional_text("logger.tracking_uri", section.get("tracking_uri"),
                                    "a folder or an MLflow tracking URI, or null"),
        experiment_name=_optional_text("logger.experiment_name",
                                       section.get("experiment_name"), "a name, or null"),
    )
    problem = logger_unavailable(config.name)
    if problem:
        raise ConfigError(problem)
    return config


def _optional_text(key: str, value: Any, allowed: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, value, f"must be {allowed}")
    return value


_IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10")
_CLASSIFICATION_DATASETS = ("digits", *_IMAGE_DATASETS)


def _optimizer_settings(train: Mapping[str, Any], g: Callable) -> dict[str, Any]:
    """train.loss / optimizer / momentum / weight_decay / betas / eps / schedule, checked."""
    betas = g(train, "train", "betas", [0.9, 0.999])
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise _fail("train.betas", betas, "must be two numbers in [0, 1), e.g. [0.9,0.999]")
    in_unit = lambda v: 0 <= v < 1  # noqa: E731
    return dict(
        loss=_choice("train.loss", g(train, "train", "loss", "mse"), LOSSES),
        optimizer=_choice("train.optimizer", g(train, "train", "optimizer", "sgd"), OPTIMIZERS),
        momentum=_float("train.momentum", g(train, "train", "momentum", 0.9), in_unit,
                        "must be in [0, 1)"),
        weight_decay=_float("train.weight_decay", g(train, "train", "weight_decay", 0.0),
                            lambda v: v >= 0, "must be >= 0"),
        betas=_betas(betas),
        eps=_float("train.eps", g(train, "train", "eps", 1e-8), lambda v: v > 0, "must be > 0"),
        schedule=_choice("train.schedule", g(train, "train", "schedule", "constant"), SCHEDULES),
        lr_unit=_choice("train.lr_unit", g(train, "train", "lr_unit", "absolute"), LR_UNITS),
    )


def _betas(betas: Any) -> tuple[float, float]:
    try:
        return tuple(_float("train.betas", b, lambda v: 0 <= v < 1, "") for b in betas)  # type: ignore[return-value]
    except ConfigError:
        raise _fail("train.betas", list(betas), "must be two numbers in [0, 1), e.g. [0.9,0.999]") from None


def _image_data_settings(d: DataConfig, data: Mapping[str, Any], g: Callable, t: TrainConfig) -> None:
    """data.classes / root / download / mirror / standardize into ``d``; the loss's needs."""
    classes = g(data, "data", "classes", None)
    if classes is not None:
        if d.name not in _IMAGE_DATASETS:
            raise _fail("data.classes", classes, f"only for data={', '.join(_IMAGE_DATASETS)}; "
                        f"use null")
        ok = (isinstance(classes, (list, tuple)) and len(classes) >= 2
              and all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
              and len(set(classes)) == len(classes))
        if not ok:
            raise _fail("data.classes", classes, "must be a list of at least two distinct integer "
                        "class labels, e.g. [3,5], or null for all")
        d.classes = list(classes)
    d.root = g(data, "data", "root", None)
    d.download = _bool("data.download", g(data, "data", "download", False))
    d.mirror = g(data, "data", "mirror", None)
    if d.mirror is not None and not str(d.mirror).startswith(("http://", "https://", "ftp://")):
        raise _fail("data.mirror", d.mirror, "must be a base URL starting with http://, https:// "
                    "or ftp://, or null for the official location")
    d.standardize = _bool("data.standardize", g(data, "data", "standardize", True))
    d.pm1_targets = t.loss == "mse"
    if t.loss == "cross_entropy" and d.name not in _CLASSIFICATION_DATASETS:
        raise _fail("train.loss", t.loss, f"data={d.name} is not a classification data set; "
                    f"cross_entropy needs data={', '.join(_CLASSIFICATION_DATASETS)}, else use mse")


def data_settings(d: DataConfig) -> dict[str, Any]:
    """The keyword arguments of the dataset builder :func:`ntk_lab.data.make_dataset`."""
    settings: dict[str, Any] = {"n_probe": d.n_probe, "seed": d.seed}
    for key in ("n_train", "n_test"):
        if getattr(d, key) is not None:
            settings[key] = getattr(d, key)
    if d.name == "sphere_teacher":
        settings["noise"] = d.noise
        if d.in_dim is not None:
            settings["in_dim"] = d.in_dim
    if d.name == "file":
        settings["path"] = d.path
    if d.name in _IMAGE_DATASETS:
        classes = None if d.classes is None else tuple(d.classes)  # hashable: sweeps cache data by settings
        settings.update(classes=classes, root=d.root, download=d.download, mirror=d.mirror,
                        standardize=d.standardize, pm1_targets=d.pm1_targets)
    return settings
