"""Function-space dynamics: what a kernel predicts for training. The closed-form gradient
flow and kernel regression (``gradient_flow``), the Θ_∞ flow for any loss and for heavy-ball
momentum (``kernel_flow``), and the linearized network (``linearized``).

Consumes kernels (tensors) and models; may import kernels and models, nothing above.
"""
