"""Training: the loop with its checkpoints (``loop``), optimizers and μP learning rates
(``optimizers``), losses and accuracy (``losses``), and the memory preflight (``preflight``).

May import layers, models, kernels, data, dynamics, measures and records; never config or
the command lines.
"""
