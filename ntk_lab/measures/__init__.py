"""Measures: tensors in, numbers out — kernel drift and distances (``drift``), kernel
geometry (``geometry``), the Hessian-based lazy-training κ (``hessian``), the geometry
columns of one checkpoint (``checkpoint_geometry``) and the training-set kernel's top
eigenvalue and critical learning rate (``kernel_curvature``).

May import layers, models and kernels; never training, records or anything above.
"""
