"""Write tests/data/nt_monte_carlo_reference.json: neural-tangents' ``monte_carlo_kernel_fn``
NNGP and NTK of a small MLP in float64, with the parameters of every network it drew, so that the
tests can rebuild the same networks in torch and hold ntk_lab's Monte-Carlo kernels to nt's.

Needs neural-tangents 0.6.5 and jax 0.4.23, which ntk_lab does not depend on; in a separate
virtual environment:

    python -m venv /tmp/nt && /tmp/nt/bin/pip install "jax==0.4.23" "jaxlib==0.4.23" \\
        "neural-tangents==0.6.5" "numpy<2" "scipy<1.13"
    /tmp/nt/bin/python scripts/make_nt_monte_carlo_reference.py

Architecture: stax.serial(Dense(64, W_std=1.5, b_std=0.1), Relu(), Dense(64, W_std=1.5,
b_std=0.1), Relu(), Dense(3, W_std=1.5, b_std=0.1)), parameterization 'ntk' — ntk_lab's
MLP(5, 64, 2, out_dim=3, w_std=1.5, b_std=0.1).

How neural-tangents 0.6.5 draws its networks (neural_tangents/_src/monte_carlo.py): starting from
``_key = key``, sample n = 1 … S does ``_key, split = random.split(_key)``, then
``init_key, dropout_key = random.split(split, 2)`` and ``init_fn(init_key, x1.shape)``. The
script replays that, records each sample's parameters and checks that the mean of nt's empirical
kernels of those parameters is nt's Monte-Carlo estimate.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
from jax import random  # noqa: E402
from neural_tangents import stax  # noqa: E402

IN_DIM, WIDTH, DEPTH, OUT_DIM = 5, 64, 2, 3
W_STD, B_STD = 1.5, 0.1
N_INPUTS, N_SAMPLES, KEY_SEED, X_SEED = 4, 3, 0, 0
IMPLEMENTATION = nt.NtkImplementation.JACOBIAN_CONTRACTION
SAME_TOL = 1e-12
"""Largest relative difference allowed between two float64 computations of the same kernel (the
Monte-Carlo mean against the mean of the replayed samples, one NTK implementation against
another, the traced kernel against the trace of the full one): rounding only, ~1e-15 here."""


def rel_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def replayed_params(init_fn, key, shape):
    """The parameters of the networks nt's monte_carlo_kernel_fn draws, in its order."""
    samples, _key = [], key
    for _ in range(N_SAMPLES):
        _key, split = random.split(_key)
        init_key, _dropout_key = random.split(split, 2)
        _, params = init_fn(init_key, shape)
        samples.append(params)
    return samples


def main() -> None:
    layers = []
    for _ in range(DEPTH):
        layers += [stax.Dense(WIDTH, W_std=W_STD, b_std=B_STD, parameterization="ntk"), stax.Relu()]
    layers.append(stax.Dense(OUT_DIM, W_std=W_STD, b_std=B_STD, parameterization="ntk"))
    init_fn, apply_fn, _ = stax.serial(*layers)
    x = np.random.default_rng(X_SEED).standard_normal((N_INPUTS, IN_DIM))
    xj = jnp.asarray(x)
    key = random.PRNGKey(KEY_SEED)

    mc_fn = nt.monte_carlo_kernel_fn(init_fn, apply_fn, key=key, n_samples=N_SAMPLES,
                                     trace_axes=(-1,), implementation=IMPLEMENTATION)
    mc = mc_fn(xj, None, ("nngp", "ntk"))
    assert mc.nngp.dtype == jnp.float64 and mc.ntk.dtype == jnp.float64

    emp = nt.empirical_kernel_fn(apply_fn, trace_axes=(-1,), implementation=IMPLEMENTATION)
    emp_struct = nt.empirical_kernel_fn(apply_fn, trace_axes=(-1,),
                                        implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES)
    emp_full = nt.empirical_kernel_fn(apply_fn, trace_axes=(), implementation=IMPLEMENTATION)

    samples = replayed_params(init_fn, key, x.shape)
    per_sample, records, trace_ratios = [], [], {"nngp": [], "ntk": []}
    for params in samples:
        k = emp(xj, None, ("nngp", "ntk"), params)
        ks = emp_struct(xj, None, ("nngp", "ntk"), params)
        assert rel_diff(ks.ntk, k.ntk) < SAME_TOL and rel_diff(ks.nngp, k.nngp) < SAME_TOL
        full = emp_full(xj, None, ("nngp", "ntk"), params)  # (N, N, O, O)
        for name in ("nngp", "ntk"):
            trace = np.trace(np.asarray(getattr(full, name)), axis1=2, axis2=3)
            trace_ratios[name].append(float(np.mean(np.asarray(getattr(k, name)) / trace)))
        # the NNGP sample is f fᵀ over the outputs, averaged: check it against the forward pass
        f = np.asarray(apply_fn(params, xj))
        assert rel_diff(k.nngp, f @ f.T / OUT_DIM) < SAME_TOL
        per_sample.append({"nngp": np.asarray(k.nngp).tolist(), "ntk": np.asarray(k.ntk).tolist()})
        records.append([{"W": np.asarray(p[0]).tolist(), "b": np.asarray(p[1]).tolist()}
                        for p in params if len(p)])  # the Relu layers have no parameters
    for name in ("nngp", "ntk"):
        mean = np.mean([s[name] for s in per_sample], axis=0)
        diff = rel_diff(mean, getattr(mc, name))
        assert diff < SAME_TOL, (name, diff)
        print(f"{name}: mean of replayed samples vs monte_carlo_kernel_fn, max rel diff {diff:.2e}")
    ratios = np.array(trace_ratios["nngp"] + trace_ratios["ntk"])
    assert np.allclose(ratios, 1 / OUT_DIM, rtol=SAME_TOL, atol=0), ratios
    print(f"traced kernel / trace of the full (O, O) kernel = {ratios.mean():.15f} (1/O = {1 / OUT_DIM})")

    out = {
        "header": {
            "source": f"neural-tangents {nt.__version__} (jax {jax.__version__}), float64, "
                      f"monte_carlo_kernel_fn(init_fn, apply_fn, key=random.PRNGKey({KEY_SEED}), "
                      f"n_samples={N_SAMPLES}, trace_axes=(-1,), implementation={IMPLEMENTATION.name})"
                      f"(x, None, ('nngp', 'ntk'))",
            "architecture": ("stax.serial(Dense(64, W_std=1.5, b_std=0.1), Relu(), Dense(64, W_std=1.5, "
                             "b_std=0.1), Relu(), Dense(3, W_std=1.5, b_std=0.1)), parameterization 'ntk': "
                             "z = (W_std/sqrt(fan_in)) h W + b_std b, W and b ~ N(0, 1); ntk_lab "
                             "MLP(5, 64, 2, out_dim=3, w_std=1.5, b_std=0.1)"),
            "sampling": ("sample s (0-based): _key = key; repeat s+1 times: _key, split = random.split(_key); "
                         "init_key, dropout_key = random.split(split, 2); init_fn(init_key, x.shape)"),
            "trace_normalization": ("trace_axes=(-1,) AVERAGES over the O = 3 outputs: traced kernel = "
                                    "trace of the full (O, O) kernel / O, for nngp and ntk (checked "
                                    f"numerically, ratio {ratios.mean():.15f})"),
            "nngp_sample": "f(x) f(x)^T / O, f the network's (N, O) output",
            "params": ("samples[s] is a list of the 3 Dense layers in order, each {W: (in, out), "
                       "b: (1, out)}; torch MLP.layers[i].weight = W.T (out, in), "
                       "MLP.layers[i].bias = b.reshape(-1) (out,)"),
            "command": "python scripts/make_nt_monte_carlo_reference.py (see its docstring)",
        },
        "x": x.tolist(),
        "samples": records,
        "monte_carlo": {"nngp": np.asarray(mc.nngp).tolist(), "ntk": np.asarray(mc.ntk).tolist()},
        "per_sample": per_sample,
    }
    path = Path(__file__).resolve().parent.parent / "tests" / "data" / "nt_monte_carlo_reference.json"
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
