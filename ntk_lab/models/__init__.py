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
from ntk_lab.models.inspect import kernel_layers, parameter_layers
from ntk_lab.models.mlp import MLP
from ntk_lab.models.resmlp import ResMLP
from ntk_lab.models.wrappers import ScaledOutput, unwrap, unwrap_mlp

__all__ = [
    "CNN", "Dense", "LayerScales", "MLP", "PARAMETERIZATIONS", "ResMLP", "ScaledOutput",
    "kernel_layers", "layer_scales", "parameter_layers", "unwrap", "unwrap_mlp",
]
