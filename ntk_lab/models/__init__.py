"""Networks built from the layers of :mod:`ntk_lab.layers` (DESIGN.md §2, §7).

    MLP      fully connected (mlp.py)
    CNN      conv layers + GAP or flatten readout (cnn.py)
    ResMLP   residual MLP (resmlp.py)
    custom   a user's callable returning an nn.Module (custom.py)

``factory.py`` builds any of them from plain settings; ``inspect.py`` tells the kernels and
metrics which layers a network has.
"""

from ntk_lab.layers import PARAMETERIZATIONS, Dense, LayerScales, layer_scales
from ntk_lab.models.cnn import CNN
from ntk_lab.models.custom import CustomModuleError
from ntk_lab.models.factory import (
    MODELS, NO_LIMIT_REASON, NetworkSpec, build_network, infinite_width_of, needs_images, network_inputs,
)
from ntk_lab.models.inspect import kernel_layers, parameter_layers
from ntk_lab.models.mlp import MLP
from ntk_lab.models.resmlp import ResMLP
from ntk_lab.models.wrappers import ScaledOutput, unwrap, unwrap_mlp

__all__ = [
    "CNN", "CustomModuleError", "Dense", "LayerScales", "MLP", "MODELS", "NO_LIMIT_REASON",
    "NetworkSpec", "PARAMETERIZATIONS", "ResMLP", "ScaledOutput", "build_network", "infinite_width_of",
    "kernel_layers", "layer_scales", "needs_images", "network_inputs", "parameter_layers", "unwrap",
    "unwrap_mlp",
]
