"""Write tests/data/nt_transformer_extra_kernels.json: neural-tangents' infinite-width NNGP and
NTK of attention and transformer networks, float64, extra cases beyond the 14 public ones of
tests/data/nt_transformer_reference.json, with the same keys and the same conventions.

Needs neural-tangents 0.6.5 and jax 0.4.23, which ntk_lab does not depend on; in a separate
virtual environment (the tests only read the JSON, they never run this script):

    python -m venv /tmp/nt && /tmp/nt/bin/pip install "jax==0.4.23" "jaxlib==0.4.23" \\
        "neural-tangents==0.6.5" "numpy<2" "scipy<1.13"
    JAX_ENABLE_X64=1 /tmp/nt/bin/python scripts/make_nt_transformer_reference.py

Architecture (stax, NTK parameterization; the width W only names the layers, kernel_fn takes
every channel count to infinity):

    Attention = GlobalSelfAttention(n_chan_out=W, n_chan_key=W, n_chan_val=W, n_heads=heads,
        linear_scaling=linear_scaling, W_key_std=sqrt(qk_std), W_query_std=sqrt(qk_std),
        W_value_std=w_std, W_out_std=1.0, b_std=b_std, attention_mechanism=mechanism.upper(),
        pos_emb_type=pos_emb.upper(), W_pos_emb_std=pos_std, val_pos_emb=False,
        batch_axis=0, channel_axis=-1)
    readout "gap" = GlobalAvgPool(channel_axis=-1), "flatten" = Flatten()
    arch "attn":        serial(Dense(W, w_std, b_std), Attention, readout, Dense(1, w_std, b_std))
    arch "transformer": serial(Dense(W, w_std, b_std),
                               depth x [Residual(LN, Attention),
                                        Residual(LN, Dense(W, w_std, b_std), act,
                                                 Dense(W, w_std, b_std))],
                               LN, readout, Dense(1, w_std, b_std))
        Residual(*f) = serial(FanOut(2), parallel(Identity(), serial(*f)), FanInSum())
        LN = LayerNorm(axis=-1, channel_axis=-1), dropped everywhere when layer_norm=False
        act: relu = Relu(), erf = Erf(), gelu = Gelu(approximate=False)

Before writing anything the script rebuilds the 14 public cases with the same builder and asserts
that it reproduces them (relative Frobenius error <= 1e-10 for nngp and ntk), when that file is
present.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ROOT / "tests" / "data" / "nt_transformer_reference.json"
OUT = ROOT / "tests" / "data" / "nt_transformer_extra_kernels.json"
WIDTH = 512  # only a name for the layers: kernel_fn is the infinite-width limit
PUBLIC_TOL = 1e-10
ACTIVATIONS = {"relu": lambda: stax.Relu(), "erf": lambda: stax.Erf(),
               "gelu": lambda: stax.Gelu(approximate=False)}
KEYS = ("w_std", "b_std", "qk_std", "heads", "pos_emb", "pos_std", "linear_scaling", "readout",
        "activation", "layer_norm", "depth", "arch", "mechanism", "inputs_name")


def attention(c: dict):
    qk = math.sqrt(c["qk_std"])
    return stax.GlobalSelfAttention(
        n_chan_out=WIDTH, n_chan_key=WIDTH, n_chan_val=WIDTH, n_heads=c["heads"],
        linear_scaling=c["linear_scaling"], W_key_std=qk, W_query_std=qk,
        W_value_std=c["w_std"], W_out_std=1.0, b_std=c["b_std"],
        attention_mechanism=c["mechanism"].upper(), pos_emb_type=c["pos_emb"].upper(),
        W_pos_emb_std=c["pos_std"], val_pos_emb=False, batch_axis=0, channel_axis=-1)


def dense(c: dict, out: int = WIDTH):
    return stax.Dense(out, W_std=c["w_std"], b_std=c["b_std"], parameterization="ntk")


def readout(c: dict):
    return {"gap": lambda: stax.GlobalAvgPool(channel_axis=-1),
            "flatten": lambda: stax.Flatten()}[c["readout"]]()


def residual(*layers):
    return stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), stax.serial(*layers)),
                       stax.FanInSum())


def build(c: dict):
    """The stax network of case c (see the module docstring)."""
    if c["arch"] == "attn":
        return stax.serial(dense(c), attention(c), readout(c), dense(c, 1))
    assert c["arch"] == "transformer", c["arch"]
    ln = (lambda: [stax.LayerNorm(axis=-1, channel_axis=-1)]) if c["layer_norm"] else list
    layers = [dense(c)]
    for _ in range(c["depth"]):
        layers.append(residual(*ln(), attention(c)))
        layers.append(residual(*ln(), dense(c), ACTIVATIONS[c["activation"]](), dense(c)))
    layers += [*ln(), readout(c), dense(c, 1)]
    return stax.serial(*layers)


def kernels(c: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, _, kernel_fn = build(c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "linear scaling attention used -> query ... ignored"
        k = kernel_fn(jnp.asarray(x), None, ("nngp", "ntk"))
    assert k.nngp.dtype == jnp.float64 and k.ntk.dtype == jnp.float64
    nngp, ntk = np.asarray(k.nngp), np.asarray(k.ntk)
    assert nngp.shape == ntk.shape == (x.shape[0],) * 2
    return nngp, ntk


def rel_fro(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check_public() -> list[dict]:
    """Rebuild the public cases; every one must agree to PUBLIC_TOL."""
    if not PUBLIC.exists():
        print(f"{PUBLIC} absent: public cases not checked")
        return []
    rows = []
    for i, c in enumerate(json.loads(PUBLIC.read_text())["cases"]):
        nngp, ntk = kernels(c, np.asarray(c["inputs"], dtype=np.float64))
        row = {"case": i, "arch": c["arch"], "mechanism": c["mechanism"],
               "readout": c["readout"], "linear_scaling": c["linear_scaling"],
               "layer_norm": c["layer_norm"],
               "nngp_rel_fro": rel_fro(nngp, c["nngp"]), "ntk_rel_fro": rel_fro(ntk, c["ntk"])}
        rows.append(row)
        print("public case {case:2d} {arch:11s} {mechanism:8s} {readout:7s} "
              "ls={linear_scaling!s:5s} ln={layer_norm!s:5s} nngp {nngp_rel_fro:.1e} "
              "ntk {ntk_rel_fro:.1e}".format(**row))
    worst = max(max(r["nngp_rel_fro"], r["ntk_rel_fro"]) for r in rows)
    assert worst <= PUBLIC_TOL, f"public cases not reproduced: worst relative error {worst:.2e}"
    return rows


def inputs(n: int, t: int, d: int, seed: int) -> tuple[str, np.ndarray]:
    return f"rand{n}x{t}x{d}_seed{seed}", np.random.RandomState(seed).standard_normal((n, t, d))


BASE = dict(w_std=1.0, b_std=0.0, qk_std=1.0, heads=1, pos_emb="none", pos_std=1.0,
            linear_scaling=True, readout="gap", activation="relu", layer_norm=True, depth=1,
            arch="attn", mechanism="softmax")


def extra_cases() -> list[tuple[str, dict, tuple[int, int, int, int]]]:
    """(family, case settings, (N, T, d_in, seed)) of every extra case."""
    out = []
    # attn, linear scaling (tied Q = K): every mechanism x both readouts, twice, the other
    # settings cycling through heads {1,2,4}, qk_std {0.5,1,2}, w_std {1,1.5}, b_std {0,0.3},
    # positional embeddings none / sum 0.5 / sum 1.
    heads, qks, ws, bs = (1, 2, 4), (0.5, 1.0, 2.0), (1.0, 1.5), (0.0, 0.3)
    pes = (("none", 1.0), ("sum", 0.5), ("sum", 1.0))
    shapes = ((4, 5, 3), (3, 6, 4), (4, 4, 5), (3, 5, 3))
    # gap over tokens of a linear-scaling attention layer after one Dense is linear in the
    # inputs' d_in channels, so with b_std = 0 its kernels have rank <= d_in: gap cases get
    # d_in >= N to stay full rank (the public case 0 is rank 3 with N = 4).
    attn_shapes = {"gap": ((4, 5, 4), (3, 6, 3), (4, 4, 5), (3, 5, 4)),
                   "flatten": ((4, 6, 3), (3, 5, 4), (4, 4, 3), (3, 6, 5))}
    i = 0
    for rep in range(2):
        for mech in ("softmax", "identity", "relu", "abs"):
            for ro in ("gap", "flatten"):
                pe, ps = pes[(i + rep) % 3]
                c = dict(BASE, arch="attn", mechanism=mech, readout=ro, heads=heads[i % 3],
                         qk_std=qks[(i // 3 + rep) % 3], w_std=ws[(i // 2) % 2],
                         b_std=bs[(i + i // 4) % 2], pos_emb=pe, pos_std=ps)
                out.append(("attn_linear_scaling", c, (*attn_shapes[ro][(i // 2) % 4], 10 + i)))
                i += 1
    # attn, 1/sqrt(n_key) scaling with separate Q, K: identity only (nt has no closed form
    # for the others), with and without positional embeddings.
    for j, (ro, pe, ps, w, b, qk, h) in enumerate([
            ("gap", "none", 1.0, 1.0, 0.0, 1.0, 1), ("flatten", "none", 1.0, 1.5, 0.3, 0.5, 2),
            ("gap", "sum", 0.5, 1.5, 0.0, 2.0, 4), ("flatten", "sum", 1.0, 1.0, 0.3, 1.0, 1),
            ("gap", "sum", 1.0, 1.0, 0.3, 0.5, 2), ("flatten", "sum", 0.5, 1.5, 0.0, 2.0, 1)]):
        c = dict(BASE, arch="attn", mechanism="identity", linear_scaling=False, readout=ro,
                 pos_emb=pe, pos_std=ps, w_std=w, b_std=b, qk_std=qk, heads=h)
        out.append(("attn_sqrt_scaling_identity", c, (*shapes[j % 4], 30 + j)))
    # transformers: (depth, act, layer_norm, mechanism, heads, b_std, w_std, pos_emb, pos_std,
    # readout, qk_std)
    for j, (depth, act, ln, mech, h, b, w, pe, ps, ro, qk) in enumerate([
            (1, "relu", True, "softmax", 1, 0.0, 1.0, "sum", 1.0, "gap", 1.0),
            (1, "erf", True, "relu", 2, 0.2, 1.3, "none", 1.0, "flatten", 1.0),
            (1, "gelu", False, "identity", 1, 0.2, 1.0, "sum", 0.5, "gap", 0.5),
            (1, "relu", False, "abs", 2, 0.0, 1.3, "sum", 1.0, "flatten", 2.0),
            (1, "gelu", True, "abs", 1, 0.0, 1.0, "none", 1.0, "gap", 1.0),
            (1, "erf", False, "softmax", 2, 0.2, 1.0, "sum", 1.0, "gap", 2.0),
            (2, "relu", True, "relu", 1, 0.2, 1.0, "sum", 1.0, "gap", 1.0),
            (2, "erf", True, "identity", 2, 0.0, 1.3, "sum", 0.5, "flatten", 1.0),
            (2, "gelu", True, "softmax", 2, 0.2, 1.3, "sum", 1.0, "gap", 0.5),
            (2, "relu", False, "softmax", 1, 0.0, 1.0, "none", 1.0, "flatten", 1.0),
            (2, "gelu", False, "relu", 2, 0.2, 1.0, "sum", 0.5, "gap", 1.0),
            (2, "erf", False, "abs", 1, 0.2, 1.3, "sum", 1.0, "gap", 1.0),
            (3, "relu", True, "abs", 2, 0.2, 1.3, "sum", 1.0, "gap", 1.0),
            (3, "erf", True, "softmax", 1, 0.0, 1.0, "sum", 0.5, "flatten", 2.0),
            (3, "gelu", True, "identity", 2, 0.2, 1.0, "none", 1.0, "gap", 1.0),
            (3, "relu", False, "relu", 1, 0.0, 1.0, "sum", 1.0, "flatten", 0.5),
            (3, "gelu", False, "softmax", 2, 0.0, 1.3, "sum", 1.0, "gap", 1.0),
            (3, "erf", False, "identity", 1, 0.2, 1.0, "sum", 0.5, "gap", 1.0)]):
        c = dict(BASE, arch="transformer", depth=depth, activation=act, layer_norm=ln,
                 mechanism=mech, heads=h, b_std=b, w_std=w, pos_emb=pe, pos_std=ps,
                 readout=ro, qk_std=qk)
        out.append(("transformer", c, (*shapes[(j + 1) % 4], 50 + j)))
    return out


def main() -> None:
    rows = check_public()
    public_header = json.loads(PUBLIC.read_text())["header"] if PUBLIC.exists() else {}
    cases, skipped, families = [], [], {}
    for family, c, (n, t, d, seed) in extra_cases():
        name, x = inputs(n, t, d, seed)
        c = dict(c, inputs_name=name)
        try:
            nngp, ntk = kernels(c, x)
        except Exception as e:  # noqa: BLE001 -- an unsupported configuration is recorded
            skipped.append({"family": family, **{k: c[k] for k in KEYS},
                            "error": f"{type(e).__name__}: {e}"})
            print(f"skipped {family} {c}: {type(e).__name__}: {e}")
            continue
        assert np.all(np.isfinite(nngp)) and np.all(np.isfinite(ntk)), c
        assert np.allclose(nngp, nngp.T, rtol=1e-12) and np.allclose(ntk, ntk.T, rtol=1e-12), c
        cases.append({"family": family, **{k: c[k] for k in KEYS}, "inputs": x.tolist(),
                      "nngp": nngp.tolist(), "ntk": ntk.tolist()})
        families[family] = families.get(family, 0) + 1

    conventions = public_header.get("conventions", "(see the docstring of the generator script)")
    learned = (
        "\n\nLearned while reproducing the 14 public cases with the builder of "
        "scripts/make_nt_transformer_reference.py (all agree to <= 1e-10 relative Frobenius):\n"
        "- stax: GlobalSelfAttention(n_chan_out=n_chan_key=n_chan_val=width, n_heads=heads,\n"
        "  linear_scaling, W_key_std=W_query_std=sqrt(qk_std), W_value_std=w_std, W_out_std=1,\n"
        "  b_std=b_std, attention_mechanism=mechanism.upper(), pos_emb_type=pos_emb.upper(),\n"
        "  W_pos_emb_std=pos_std, val_pos_emb=False); gap = GlobalAvgPool(channel_axis=-1),\n"
        "  flatten = Flatten(); LN = LayerNorm(axis=-1, channel_axis=-1); residual =\n"
        "  serial(FanOut(2), parallel(Identity(), serial(...)), FanInSum()); every Dense is\n"
        "  Dense(out, W_std=w_std, b_std=b_std) (embedding, the MLP's two, readout).\n"
        "- The attention bias is b_std b (the same b_std as the Dense layers). With b_std = 0\n"
        "  it is the same as no bias; the public cases all have b_std = 0.\n"
        "- nt's attention NTK (linear_scaling=True): ntk_out = w_std^2 * A ntk_in A^T + b_std^2\n"
        "  + 2 * (nngp_out - b_std^2), i.e. the query/key weights contribute nothing in the limit\n"
        "  and the value and output weights each contribute the weighted NNGP.\n"
        "- The public cases all have w_std = qk_std = 1, b_std = 0, pos_emb 'none', so they do\n"
        "  not pin where those scales enter; the mapping above follows nt's GlobalSelfAttention\n"
        "  source\n"
        "  (QK_std = W_query_std * W_key_std = qk_std, OV_std = W_out_std * W_value_std = w_std).\n"
        "  A width-1024, 64-sample nt Monte-Carlo NTK of three extra attn cases with off-default\n"
        "  scales (softmax and relu with pos_emb 'sum', sqrt-scaled identity) agreed with these\n"
        "  kernels to 0.7-2 %.\n"
        "- heads does not enter the infinite-width kernels (nt's kernel_fn ignores n_heads).\n"
        "- pos_emb 'sum' with pos_emb_decay_fn=None: E has identity covariance over tokens, so the\n"
        "  logits see cov(h) + pos_std^2 * I_T; the values never see E (val_pos_emb=False).\n"
        "- activation: relu = Relu(), erf = Erf(), gelu = Gelu(approximate=False) (exact GELU,\n"
        "  x Phi(x)). For arch 'attn' the activation, layer_norm and depth keys are unused.\n"
        "- Each extra case also has a 'family' key: attn_linear_scaling,\n"
        "  attn_sqrt_scaling_identity or transformer.\n"
        "- linear_scaling=False is only implemented by nt for mechanism 'identity'.\n"
        "- inputs: rand{N}x{T}x{d}_seed{K} =\n"
        "  numpy.random.RandomState(K).standard_normal((N, T, d))\n"
        "  (the public rand4x5x3 / rand3x6x4 are RandomState(0) / RandomState(1) draws).")
    out = {
        "header": {
            "source": f"neural-tangents {nt.__version__} stax kernel_fn, jax {jax.__version__}, "
                      "float64, kernel_fn(x, None, ('nngp', 'ntk'))",
            "conventions": conventions + learned,
            "layout": "inputs (N, T, d_in); nngp/ntk (N, N)",
            "width_in_nt": WIDTH,
            "families": families,
            "public_check": {"file": "tests/data/nt_transformer_reference.json",
                             "tolerance": PUBLIC_TOL,
                             "worst_rel_fro": max((max(r["nngp_rel_fro"], r["ntk_rel_fro"])
                                                   for r in rows), default=None)},
            "skipped": skipped,
            "command": "JAX_ENABLE_X64=1 python scripts/make_nt_transformer_reference.py "
                       "(see its docstring; needs neural-tangents 0.6.5 + jax 0.4.23 in a "
                       "separate venv, not run by the tests)",
        },
        "cases": cases,
    }
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases {families}, {len(skipped)} skipped, "
          f"{OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
