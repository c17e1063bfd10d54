"""Kernels: the empirical NTK of a finite network and the infinite-width NNGP / NTK."""

from ntk_lab.kernels.empirical import METHODS, empirical_ntk, jacobian_change

__all__ = ["METHODS", "empirical_ntk", "jacobian_change"]
