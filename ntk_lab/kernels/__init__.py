"""Kernels: the empirical NTK of a finite network and the infinite-width NNGP / NTK."""

from ntk_lab.kernels.analytic import infinite_width_kernels
from ntk_lab.kernels.empirical import METHODS, empirical_ntk, empirical_ntk_layers, jacobian_change
from ntk_lab.kernels.finite_width import nngp_finite_width_corrections
from ntk_lab.kernels.finite_width_ntk import finite_width_corrections, ntk_finite_width_variance
from ntk_lab.kernels.finite_width_residual import resmlp_nngp_corrections
from ntk_lab.kernels.finite_width_residual_mean import resmlp_ntk_corrections
from ntk_lab.kernels.finite_width_residual_ntk import resmlp_ntk_variance
from ntk_lab.kernels.kernel_velocity import mlp_kernel_velocity
from ntk_lab.kernels.monte_carlo import monte_carlo_kernels

__all__ = ["METHODS", "empirical_ntk", "empirical_ntk_layers", "infinite_width_kernels", "jacobian_change",
           "finite_width_corrections", "mlp_kernel_velocity", "monte_carlo_kernels", "nngp_finite_width_corrections",
           "ntk_finite_width_variance", "resmlp_nngp_corrections", "resmlp_ntk_corrections", "resmlp_ntk_variance"]
