"""Build any network of ``model=mlp|cnn|resmlp|transformer|custom`` from plain settings (what the
experiment runner calls; only the command lines read the Hydra config)."""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from ntk_lab.models.cnn import CNN
from ntk_lab.models.custom import CustomModuleError, build_custom
from ntk_lab.models.mlp import MLP
from ntk_lab.models.resmlp import ResMLP
from ntk_lab.models.transformer import Transformer

MODELS = ("mlp", "cnn", "resmlp", "transformer", "custom")


@dataclass
class NetworkSpec:
    """Plain settings of one network (the validated ``model`` config group).

    Attributes: the ``model.*`` config keys of the README (``name`` is the group choice);
    ``extra`` holds a custom module's additional keys.
    """

    name: str
    width: int
    depth: int
    _: KW_ONLY  # the rest by keyword
    activation: Optional[str] = "relu"
    parameterization: Optional[str] = "ntk"
    w_std: Optional[float] = 1.0
    b_std: Optional[float] = 0.0
    kernel_size: int = 3
    padding: str = "same"
    readout: str = "gap"
    branch_scale: float = 1.0
    heads: int = 1  # transformer (and its attention: mechanism, scaling, qk_std, pos_emb, …)
    qk_std: float = 1.0
    scaling: str = "linear"
    mechanism: str = "softmax"
    layer_norm: bool = True
    pos_emb: str = "none"
    pos_std: float = 1.0
    patch_size: Optional[int] = None
    target: Optional[str] = None
    extra: dict = field(default_factory=dict)


def needs_images(name: str) -> bool:
    """Whether the network takes (N, C, H, W) images (a CNN); custom modules take images when
    the data has an image shape, vectors otherwise; a transformer takes images or sequences."""
    return name == "cnn"


def token_layout(spec: NetworkSpec, in_shape: Sequence[int]) -> tuple[int, int]:
    """(T, d): the tokens a transformer makes of one input of shape ``in_shape`` — a sequence
    (T, d), or an image (C, H, W) cut into p × p patches (T = HW/p², d = C·p²).

    Raises:
        ValueError: vector inputs, images without ``patch_size``, or a patch size that does
            not divide the image (one line each, naming the key).
    """
    in_shape = tuple(in_shape)
    if len(in_shape) == 2:
        return in_shape
    if len(in_shape) == 3:
        p = spec.patch_size
        if not p:
            raise ValueError(f"model=transformer on images of shape {in_shape} needs model.patch_size "
                             f"(the side p of the square patches that become tokens)")
        c, h, w = in_shape
        if h % p or w % p:
            raise ValueError(f"model.patch_size={p} does not divide the image size {h}×{w}: allowed: "
                             f"{', '.join(str(k) for k in range(1, min(h, w) + 1) if h % k == 0 and w % k == 0)}")
        return (h // p) * (w // p), c * p * p
    raise ValueError(f"model=transformer needs sequences (N, T, d) (data=file with x of shape (N, T, d)) "
                     f"or images with model.patch_size; these inputs are vectors of shape {in_shape}")


def build_network(spec: NetworkSpec, in_shape: Sequence[int], out_dim: int, *, seed: Optional[int],
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> nn.Module:
    """The network ``spec`` describes, for inputs of shape ``in_shape`` (one sample).

    Raises:
        ValueError: a CNN on vector inputs; CustomModuleError (a ValueError) for a custom
            module that cannot be imported, called, or is not a Module.
    """
    if spec.name not in MODELS:
        raise ValueError(f"model={spec.name!r} is invalid: allowed: {', '.join(MODELS)}")
    in_shape = tuple(in_shape)
    common = dict(out_dim=out_dim, activation=spec.activation,
                  parameterization=spec.parameterization, w_std=spec.w_std, b_std=spec.b_std,
                  seed=seed, dtype=dtype, device=device)
    if spec.name == "mlp":
        return MLP(math.prod(in_shape), spec.width, spec.depth, **common)
    if spec.name == "resmlp":
        return ResMLP(math.prod(in_shape), spec.width, spec.depth,
                      branch_scale=spec.branch_scale, **common)
    if spec.name == "cnn":
        if len(in_shape) != 3:
            raise ValueError(f"model=cnn needs image data (C, H, W); these inputs are vectors of shape "
                             f"{in_shape} (use e.g. data=digits)")
        return CNN(in_shape[0], spec.width, spec.depth, kernel_size=spec.kernel_size,
                   padding=spec.padding, readout=spec.readout, spatial_shape=in_shape[1:],
                   **common)
    if spec.name == "transformer":
        tokens, d = token_layout(spec, in_shape)
        return Transformer(d, spec.width, spec.depth, heads=spec.heads, qk_std=spec.qk_std,
                           scaling=spec.scaling, mechanism=spec.mechanism, layer_norm=spec.layer_norm,
                           pos_emb=spec.pos_emb, pos_std=spec.pos_std, readout=spec.readout,
                           branch_scale=spec.branch_scale, n_tokens=tokens,
                           patch_size=spec.patch_size if len(in_shape) == 3 else None, **common)
    if not spec.target:
        raise CustomModuleError("model.target must be set for model=custom (package.module:callable)")
    if seed is not None:
        torch.manual_seed(seed)  # for builders that draw from the global generator
    model = build_custom(spec.target, width=spec.width, depth=spec.depth, in_shape=in_shape,
                         out_dim=out_dim, seed=seed, extra=spec.extra)
    return model.to(dtype=dtype, device=device)


def network_inputs(name: str, data):
    """The data set as the network takes it: (N, C, H, W) images for a CNN (a one-line
    DataError on vector data) and for a custom module when the data has an image shape;
    (N, T, d) sequences, or images, for a transformer; flat rows otherwise. ``data``: an
    :class:`ntk_lab.data.Dataset`."""
    if name == "cnn" or (name in ("custom", "transformer") and data.image_shape is not None):
        return data.as_images()
    if name in ("custom", "transformer") and data.token_shape is not None:
        return data.as_tokens()
    return data
