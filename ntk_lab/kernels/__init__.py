"""Kernels: the empirical NTK of a finite network and the infinite-width NNGP / NTK."""

from ntk_lab.kernels.analytic import infinite_width_kernels
from ntk_lab.kernels.empirical import METHODS, empirical_ntk, jacobian_change

__all__ = ["METHODS", "empirical_ntk", "infinite_width_kernels", "jacobian_change"]
