"""The typed schema of a run's settings: plain dataclasses, and the one error type.

:func:`ntk_lab.config.validate` fills a :class:`RunConfig` from the composed settings or raises
:class:`ConfigError` with one line naming the key, the bad value and what is allowed; nothing
downstream re-checks its inputs.
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ntk_lab.models import NetworkSpec

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
    # which network, and the knobs of the conv / residual / custom ones
    name: str = "mlp"  # mlp | cnn | resmlp | custom (the model group's choice)
    kernel_size: int = 3  # cnn
    padding: str = "same"  # cnn
    readout: str = "gap"  # cnn
    branch_scale: float | str = 1.0  # resmlp, transformer: β, or "inv_sqrt_depth" for β = 1/√depth
    heads: int = 1  # transformer: its attention layers' heads, logit scaling and mechanism, …
    qk_std: float = 1.0
    scaling: str = "linear"
    mechanism: str = "softmax"
    layer_norm: bool = True
    pos_emb: str = "none"
    pos_std: float = 1.0
    patch_size: Optional[int] = None  # transformer on images: the patch side p
    target: Optional[str] = None  # custom: package.module:callable
    extra: dict = field(default_factory=dict)  # custom: further model.* keys, passed on

    def spec(self) -> NetworkSpec:
        """The plain network settings :func:`ntk_lab.models.build_network` takes."""
        return NetworkSpec(self.name, self.width, self.depth, activation=self.activation,
                           parameterization=self.parameterization, w_std=self.w_std,
                           b_std=self.b_std, kernel_size=self.kernel_size, padding=self.padding,
                           readout=self.readout, branch_scale=self.branch_scale_value,
                           heads=self.heads, qk_std=self.qk_std, scaling=self.scaling,
                           mechanism=self.mechanism, layer_norm=self.layer_norm,
                           pos_emb=self.pos_emb, pos_std=self.pos_std, patch_size=self.patch_size,
                           target=self.target, extra=dict(self.extra))

    @property
    def branch_scale_value(self) -> float:
        """β as a number: ``inv_sqrt_depth`` is 1/√depth (Bordelon et al. 2023; Yang et al. 2023,
        Tensor Programs VI: the residual scaling whose hyperparameters transfer across depth)."""
        if self.branch_scale == INV_SQRT_DEPTH:
            return 1.0 / math.sqrt(self.depth)
        return float(self.branch_scale)


INV_SQRT_DEPTH = "inv_sqrt_depth"


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
    # image data sets (mnist, fashion_mnist, cifar10: ntk_lab.data.images)
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
    lr_unit: str = "absolute"  # "crit": lr is a multiple of η_crit = 2/λ_max(Θ_0/N) (training set)


@dataclass
class NTKConfig:
    enabled: bool  # False: no kernels, no Θ_∞ — the baseline the instrumentation costs against
    method: str
    checkpoints: int
    memory_budget_mb: int
    jac_change: bool
    store: str  # which Θ_t kernels.pt keeps (ntk_lab.records.storage)
    store_dtype: str
    store_max_mb: int
    top_k: int  # k of the top-k eigenspace columns (ntk_lab.measures.checkpoint_geometry)
    spectrum_max_probe: int  # the largest probe set whose spectrum is computed per checkpoint
    lambda_max: bool | str = "auto"  # λ_max(Θ_t/N) on the training set per checkpoint (auto: with lr_unit=crit)
    mc_width: Optional[int] = None  # lazy.infinite_width=monte_carlo: the networks' width (None: the run's)
    mc_samples: int = 16  # lazy.infinite_width=monte_carlo: how many networks are averaged


@dataclass
class LazyConfig:
    linearized: bool
    infinite_width: bool | str  # True, False, "auto" (computed when under max_minutes) or "monte_carlo"
    kappa_hessian: bool
    hessian_points: int
    hessian_iters: int
    max_minutes: float = 5.0  # the estimate above which infinite_width=auto skips it


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
        """The resolved values summary.json records (names of docs/conventions.md, *Output files*)."""
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
            "weight_decay": t.weight_decay, "schedule": t.schedule, "lr_unit": t.lr_unit,
            "ntk_enabled": k.enabled, "ntk_method": k.method, "checkpoints": k.checkpoints,
            "dtype": self.precision, "device": self.device,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def m_arch(m: ModelConfig) -> dict[str, Any]:
    """The network's name and the knobs of its kind, for summary.json."""
    extra = {"cnn": {"kernel_size": m.kernel_size, "padding": m.padding, "readout": m.readout},
             "resmlp": {"branch_scale": m.branch_scale},
             "transformer": {"heads": m.heads, "qk_std": m.qk_std, "scaling": m.scaling,
                             "mechanism": m.mechanism, "layer_norm": m.layer_norm,
                             "pos_emb": m.pos_emb, "pos_std": m.pos_std, "readout": m.readout,
                             "branch_scale": m.branch_scale, "patch_size": m.patch_size},
             "custom": {"target": m.target, **{f"model_{k}": v for k, v in m.extra.items()}}}
    return {"model": m.name, **extra.get(m.name, {})}
