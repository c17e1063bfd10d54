"""Write tests/data/nt_standard_reference.json: neural-tangents' infinite-width NNGP and NTK of
MLPs in the ``standard`` parameterization, float64, for the tests to hold ntk_lab's Θ_∞ to.

Needs neural-tangents 0.6.5 and jax 0.4.23, which ntk_lab does not depend on; in a separate
virtual environment:

    python -m venv /tmp/nt && /tmp/nt/bin/pip install "jax==0.4.23" "jaxlib==0.4.23" \\
        "neural-tangents==0.6.5" "numpy<2" "scipy<1.13"
    /tmp/nt/bin/python scripts/make_nt_standard_reference.py

Architecture: stax.serial([Dense(width, W_std, b_std, parameterization='standard'), φ] * depth,
Dense(1, W_std, b_std, parameterization='standard')), the same W_std, b_std in every layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from neural_tangents import stax  # noqa: E402

ACTIVATIONS = {"relu": stax.Relu(), "erf": stax.Erf(), "abs": stax.Abs(),
               "leaky_relu": stax.LeakyRelu(0.01), "identity": stax.Identity()}
# (activation, depth, W_std, b_std, width)
CASES = [
    ("relu", 1, 1.0, 0.0, 64), ("relu", 2, 1.3, 0.2, 64), ("relu", 3, 1.5, 0.1, 1000),
    ("erf", 1, 1.2, 0.3, 100), ("erf", 3, 1.0, 0.0, 256),
    ("abs", 2, 1.1, 0.2, 128), ("leaky_relu", 2, 1.4, 0.1, 512), ("identity", 2, 0.9, 0.5, 32),
]


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3))
    x[4] = 0.0  # a zero input: with b_std = 0 its first pre-activations are exactly 0
    cases = []
    for act, depth, w_std, b_std, width in CASES:
        layers = []
        for _ in range(depth):
            layers += [stax.Dense(width, W_std=w_std, b_std=b_std, parameterization="standard"),
                       ACTIVATIONS[act]]
        layers.append(stax.Dense(1, W_std=w_std, b_std=b_std, parameterization="standard"))
        _, _, kernel_fn = stax.serial(*layers)
        k = kernel_fn(x, x, ("nngp", "ntk"))
        cases.append({"activation": act, "depth": depth, "w_std": w_std, "b_std": b_std,
                      "width": width, "nngp": np.asarray(k.nngp).tolist(),
                      "ntk": np.asarray(k.ntk).tolist()})
    out = {"header": {"source": "neural-tangents 0.6.5 (jax 0.4.23), float64, "
                                 "kernel_fn(x, x, ('nngp', 'ntk'))",
                      "architecture": __doc__.split("Architecture: ", 1)[1].strip(),
                      "command": "python scripts/make_nt_standard_reference.py (see its docstring)"},
           "x": x.tolist(), "cases": cases}
    path = Path(__file__).resolve().parent.parent / "tests" / "data" / "nt_standard_reference.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
