"""ntk_lab: how far is a finite network from its infinite-width limit?

Records the empirical neural tangent kernel (NTK) of a network during training, measures its
drift and its distance to the analytic infinite-width kernel Θ_∞, and sweeps width, depth,
learning rate and parameterization with Hydra. See README.md and DESIGN conventions there.
"""

__version__ = "0.1.0"
