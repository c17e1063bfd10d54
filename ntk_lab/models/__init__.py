"""Networks built from the layers of :mod:`ntk_lab.layers` (docs/architecture.md).

    MLP      fully connected (mlp.py)
    CNN      conv layers + GAP or flatten readout (cnn.py)
    ResMLP   residual MLP (resmlp.py)
    Transformer  pre-LN transformer on token sequences or patch-cut images (transformer.py)
    custom   a user's callable returning an nn.Module (custom.py)

``factory.py`` builds any of them from plain settings; ``layer_groups.py`` is the one place
that says which parameters form a layer (and which layers compose to Θ_∞);
``layer_outputs.py`` reads layers' inputs and outputs with forward hooks.

May import layers only; the kernels build on models, never the other way round.
"""

from ntk_lab.layers import PARAMETERIZATIONS, Dense, LayerScales, layer_scales
from ntk_lab.models.cnn import CNN
from ntk_lab.models.custom import CustomModuleError
from ntk_lab.models.factory import (
    MODELS, NetworkSpec, build_network, needs_images, network_inputs, token_layout,
)
from ntk_lab.models.layer_groups import kernel_layers, parameter_layers, trainable_layers
from ntk_lab.models.mlp import MLP
from ntk_lab.models.resmlp import ResMLP
from ntk_lab.models.transformer import Transformer
from ntk_lab.models.wrappers import ScaledOutput, unwrap, unwrap_mlp

__all__ = [
    "CNN", "CustomModuleError", "Dense", "LayerScales", "MLP", "MODELS",
    "NetworkSpec", "PARAMETERIZATIONS", "ResMLP", "ScaledOutput", "Transformer", "token_layout", "build_network",
    "kernel_layers", "layer_scales", "needs_images", "network_inputs", "parameter_layers", "trainable_layers", "unwrap",
    "unwrap_mlp",
]


def __getattr__(name: str):
    # Θ_∞ of a network's settings moved next to the kernels (models never import kernels).
    from ntk_lab import _moved_attribute

    return _moved_attribute(__name__, "ntk_lab.kernels.network_limit", name)
