"""Measures: tensors in, numbers out — kernel drift and distances (``drift``), kernel
geometry (``geometry``), the Hessian-based lazy-training κ (``hessian``) and the geometry
columns of one checkpoint (``checkpoint_geometry``).

May import layers, models and kernels; never training, records or anything above.
"""
