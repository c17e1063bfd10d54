"""Time infinite_width_kernels on 2048 × 2048 pairs at depth 5 (CPU by default).

    python scripts/bench_analytic.py [--n 2048] [--in-dim 10] [--depth 5] [--device cpu]
                                     [--activations relu erf tanh] [--repeats 3]

Inputs are N(0, 1) in R^in_dim (so Σ¹(x, x) ≈ 1), w_std = 1, b_std = 0.1, x2 = None (the
symmetric case: half the pairs are computed). Prints the best of ``--repeats`` wall times per
activation and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from ntk_lab.kernels import infinite_width_kernels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--in-dim", type=int, default=10)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--activations", nargs="+", default=["relu", "erf", "tanh"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    x = torch.randn(args.n, args.in_dim, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64).to(args.device)
    infinite_width_kernels(x[:8], activation="tanh", depth=1)  # build the Hermite table once
    print(f"infinite_width_kernels: {args.n}x{args.n} pairs, in_dim {args.in_dim}, depth {args.depth}, "
          f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.activations:
        times = []
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            nngp, ntk = infinite_width_kernels(x, activation=name, depth=args.depth, w_std=1.0, b_std=0.1)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        ok = bool(torch.isfinite(ntk).all())
        print(f"  {name:10s} best {min(times):7.3f} s   (all: {', '.join(f'{t:.3f}' for t in times)})"
              f"   finite={ok}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"peak resident memory of this process: {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
