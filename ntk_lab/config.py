"""The typed schema of a run's settings and their validation.

``run.py`` turns the composed Hydra config into a plain nested dict and calls
:func:`validate`, which returns a :class:`RunConfig` of plain dataclasses or raises
:class:`ConfigError` with one line naming the key, the bad value and what is allowed. Nothing
downstream re-checks its inputs. No other module sees the Hydra config object.
:func:`check_overrides` checks the command line's group options and setting names against the
config files before Hydra composes, so a typo also gets one line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ntk_lab.activations import ACTIVATIONS
from ntk_lab.checkpoint_geometry import DEFAULT_SPECTRUM_MAX_PROBE, DEFAULT_TOP_K
from ntk_lab.data import DATASETS
from ntk_lab.kernels.empirical import METHODS
from ntk_lab.loggers import LOGGERS, logger_unavailable
from ntk_lab.losses import LOSSES
from ntk_lab.models import MODELS, PARAMETERIZATIONS, NetworkSpec
from ntk_lab.models.cnn import PADDINGS, READOUTS
from ntk_lab.optim import OPTIMIZERS, SCHEDULES
from ntk_lab.storage import DEFAULT_STORE_MAX_MB, STORE_DTYPES, STORE_LEVELS

PRECISIONS = ("float32", "float64")


class ConfigError(ValueError):
    """A setting is invalid; the message is one line naming the key and the allowed values."""


@dataclass
class ModelConfig:
    width: int
    depth: int
    activation: Optional[str]  # None for a custom module (its own business)
    parameterization: Optional[str]
    w_std: Optional[float]
    b_std: Optional[float]
    out_dim: Optional[int]  # None: taken from the data
    output_scale: float  # α of Chizat et al. 2019; 1 = the plain network
    center: bool  # train α·(f(θ) − f(θ₀)) instead of α·f(θ)
    # issue 10: which network, and the knobs of the conv / residual / custom ones
    name: str = "mlp"  # mlp | cnn | resmlp | custom (the model group's choice)
    kernel_size: int = 3  # cnn
    padding: str = "same"  # cnn
    readout: str = "gap"  # cnn
    branch_scale: float = 1.0  # resmlp
    target: Optional[str] = None  # custom: package.module:callable
    extra: dict = field(default_factory=dict)  # custom: further model.* keys, passed on

    def spec(self) -> NetworkSpec:
        """The plain network settings :func:`ntk_lab.models.build_network` takes."""
        return NetworkSpec(self.name, self.width, self.depth, self.activation, self.parameterization,
                           self.w_std, self.b_std, self.kernel_size, self.padding, self.readout,
                           self.branch_scale, self.target, dict(self.extra))


@dataclass
class DataConfig:
    name: str
    n_train: Optional[int]
    n_test: Optional[int]
    n_probe: int
    seed: int
    path: Optional[str]
    in_dim: Optional[int]
    noise: float
    # image data sets (mnist, fashion_mnist, cifar10: ntk_lab.datasets)
    classes: Optional[list[int]] = None  # None: all ten
    root: Optional[str] = None  # None: $NTK_LAB_DATA, else the user's cache folder
    download: bool = False
    mirror: Optional[str] = None  # None: the official location
    standardize: bool = True
    pm1_targets: bool = True  # two classes: one ±1 target column (set from train.loss=mse)


@dataclass
class TrainConfig:
    steps: int
    lr: float
    batch_size: Optional[int]
    seed: int
    loss: str = "mse"
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"


@dataclass
class NTKConfig:
    enabled: bool  # False: no kernels, no Θ_∞ — the baseline the instrumentation costs against
    method: str
    checkpoints: int
    memory_budget_mb: int
    jac_change: bool
    store: str  # which Θ_t kernels.pt keeps (ntk_lab.storage)
    store_dtype: str
    store_max_mb: int
    top_k: int  # k of the top-k eigenspace columns (ntk_lab.checkpoint_geometry)
    spectrum_max_probe: int  # the largest probe set whose spectrum is computed per checkpoint


@dataclass
class LazyConfig:
    linearized: bool
    infinite_width: bool
    kappa_hessian: bool
    hessian_points: int
    hessian_iters: int


@dataclass
class LoggerConfig:
    name: str  # none | tensorboard | mlflow (ntk_lab.loggers)
    tracking_uri: Optional[str] = None  # mlflow: a folder or an MLflow URI; None: ./outputs/mlflow
    experiment_name: Optional[str] = None  # mlflow: None = the sweep folder's path


@dataclass
class RunConfig:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    ntk: NTKConfig
    lazy: LazyConfig
    precision: str
    device: str
    resume: bool
    progress: bool
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig("none"))

    def flat(self) -> dict[str, Any]:
        """The resolved values summary.json records (DESIGN.md §5 names)."""
        m, d, t, k = self.model, self.data, self.train, self.ntk
        return {
            "width": m.width, "depth": m.depth, "lr": t.lr, "seed": t.seed,
            "activation": m.activation, "parameterization": m.parameterization,
            "w_std": m.w_std, "b_std": m.b_std, "out_dim": m.out_dim,
            "output_scale": m.output_scale, "center": m.center, **m_arch(m),
            "dataset": d.name, "n_train": d.n_train, "n_test": d.n_test, "n_probe": d.n_probe,
            "data_seed": d.seed, "steps": t.steps, "batch_size": t.batch_size,
            "classes": d.classes, "loss": t.loss, "optimizer": t.optimizer,
            "momentum": t.momentum if t.optimizer == "momentum" else None,
            "weight_decay": t.weight_decay, "schedule": t.schedule,
            "ntk_enabled": k.enabled, "ntk_method": k.method, "checkpoints": k.checkpoints,
            "dtype": self.precision, "device": self.device,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def m_arch(m: ModelConfig) -> dict[str, Any]:
    """The network's name and the knobs of its kind, for summary.json."""
    extra = {"cnn": {"kernel_size": m.kernel_size, "padding": m.padding, "readout": m.readout},
             "resmlp": {"branch_scale": m.branch_scale},
             "custom": {"target": m.target, **{f"model_{k}": v for k, v in m.extra.items()}}}
    return {"model": m.name, **extra.get(m.name, {})}


# ----------------------------------------------------------------------------- checks
# How the user spells a key: the top-level knobs (DESIGN.md §4) are set as `width=…` etc.
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


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _fail(key, value, "must be true or false")


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
    m.activation = _choice("model.activation", g(model, "model", "activation"), tuple(ACTIVATIONS))
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
    if name == "resmlp":
        m.branch_scale = _float("model.branch_scale", g(model, "model", "branch_scale", 1.0),
                                lambda v: v >= 0, "must be a number >= 0")
    return m


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
    )
    z = LazyConfig(
        linearized=_bool("lazy.linearized", g(lazy, "lazy", "linearized", False)),
        infinite_width=_bool("lazy.infinite_width", g(lazy, "lazy", "infinite_width", True)),
        kappa_hessian=_bool("lazy.kappa_hessian", g(lazy, "lazy", "kappa_hessian", False)),
        hessian_points=_int("lazy.hessian_points", g(lazy, "lazy", "hessian_points", 8), 1),
        hessian_iters=_int("lazy.hessian_iters", g(lazy, "lazy", "hessian_iters", 30), 1),
    )
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


# Config groups whose option a user picks on the command line (`data=digits`); an unknown option
# is reported here in one line, before Hydra would print a multi-line composition error.
_USER_GROUPS = ("model", "data", "train", "ntk", "lazy", "logger", "optim", "experiment")


def _yaml_keys(path: Path) -> set[str]:
    import yaml

    content = yaml.safe_load(path.read_text()) or {}
    return {k for k in content if k not in ("defaults", "hydra")}


def check_overrides(argv: list[str], config_dir: Path) -> Optional[str]:
    """The one-line error for the first override naming an unknown option or key, or None.

    ``group=option`` (comma-separated sweep values each checked) must name a file of the
    group; ``group.key=value`` a key that some option of the group has (any ``model.*`` key
    with ``model=custom``: the custom module receives it); ``key=value`` a
    top-level key of config.yaml. Hydra's own keys (``hydra.*``) are left to Hydra.
    """
    top_level = _yaml_keys(config_dir / "config.yaml")
    # a custom module takes any further model.* key (passed to its builder as a keyword)
    custom = any(a.lstrip("+~") in ("model=custom",) for a in argv)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        group, _, sub = key.partition(".")
        if group == "hydra" or group.startswith("hydra/"):
            continue
        if group in _USER_GROUPS and not sub:
            allowed = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
            for option in value.split(","):
                if value not in ("", "null") and option.strip() not in allowed:
                    return f"{group}={option.strip()!r} is invalid: allowed: {', '.join(allowed)}"
        elif group in _USER_GROUPS and group != "experiment":
            if group == "model" and custom:
                continue
            known = set().union(*(_yaml_keys(p) for p in (config_dir / group).glob("*.yaml")))
            if sub not in known:
                return f"{key} is not a setting; {group} has: {', '.join(sorted(known))}"
            problem = None if arg.startswith("+") else _key_of_another_option(
                group, sub, argv, config_dir)  # `+group.key=` adds a key on purpose
            if problem:
                return problem
        elif not sub and group not in top_level:
            return f"{key} is not a setting; top-level keys: {', '.join(sorted(top_level))}"
    return None


def _key_of_another_option(group: str, key: str, argv: list[str], config_dir: Path) -> Optional[str]:
    """The error for ``group.key`` when the group's chosen option lacks ``key`` (it belongs to
    another option: ``logger.tracking_uri`` without ``logger=mlflow``), else None.

    The chosen option is the command line's ``group=option``, else the chosen preset's
    ``override /group: option``, else config.yaml's default; a swept option is not checked.
    """
    chosen = _chosen_options(argv, config_dir)
    option = chosen.get(group)
    path = config_dir / group / f"{option}.yaml"
    if not option or not path.is_file() or key in _yaml_keys(path):
        return None
    # config.yaml or the preset (both `_global_`) may set the key under the group themselves
    for extra in (config_dir / "config.yaml",
                  config_dir / "experiment" / f"{chosen.get('experiment')}.yaml"):
        if extra.is_file() and key in _group_section(extra, group):
            return None
    owners = sorted(p.stem for p in (config_dir / group).glob("*.yaml") if key in _yaml_keys(p))
    return (f"{group}.{key} is not a setting of {group}={option}; it belongs to "
            f"{' or '.join(f'{group}={o}' for o in owners)} (choose one on the command line)")


def _group_section(path: Path, group: str) -> dict:
    import yaml

    section = (yaml.safe_load(path.read_text()) or {}).get(group)
    return section if isinstance(section, dict) else {}


def _chosen_options(argv: list[str], config_dir: Path) -> dict[str, str]:
    """Group -> option as the command line, the chosen preset and config.yaml's defaults pick
    it (in that order of precedence); groups swept over several options are left out."""
    import yaml

    def entries(path: Path) -> dict[str, Any]:
        found = {}
        for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults") or []:
            if isinstance(entry, dict):
                for name, option in entry.items():
                    found[str(name).replace("override", "").strip().strip("/")] = option
        return found

    chosen = {g: o for g, o in entries(config_dir / "config.yaml").items() if g in _USER_GROUPS}
    typed: dict[str, Optional[str]] = {}
    for arg in argv:
        name, _, value = arg.partition("=")
        name = name.lstrip("+~")
        if name in _USER_GROUPS and "=" in arg:
            typed[name] = None if "," in value else value
    preset = typed.get("experiment", chosen.get("experiment"))
    if preset and (config_dir / "experiment" / f"{preset}.yaml").is_file():
        chosen.update({g: o for g, o in entries(config_dir / "experiment" / f"{preset}.yaml")
                       .items() if g in _USER_GROUPS})
    chosen.update(typed)
    return {g: str(o) for g, o in chosen.items() if o is not None}
