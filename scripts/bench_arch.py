#!/usr/bin/env python
"""Benchmark conv nets in ONE process; ratios are the result (shared machines are
noisy).

1. Empirical NTK of a CNN, 1 → C channels × 3 conv layers, 3×3 'same', ReLU, GAP, 8×8 inputs,
   N = 128, out_dim 1, float32: seconds of ``auto`` (and of the other methods with --all)
   divided by one forward+backward pass over the batch, timed in alternating pairs (the
   median of the per-pair ratios; "spread" is the largest over the smallest). Targets:
   ≤ 3× at 512 channels, ≤ 2× at 128.
2. Θ_∞ of a CNN with GAP, depth 3, ReLU, 32 images of 3×16×16, float64: seconds and peak
   extra memory. Targets: ≤ 6 s, ≤ 2 GB.

    python scripts/bench_arch.py                 # both, CPU
    python scripts/bench_arch.py --all           # also jacrev and ntvp (slow on a CPU)
    python scripts/bench_arch.py --device cuda   # on a GPU (TF32 off while kernels run)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

from bench_ntk import PeakMemory  # scripts/ is on sys.path when run as a script
from ntk_lab.kernels import empirical_ntk, infinite_width_kernels
from ntk_lab.kernels.empirical import resolve_method
from ntk_lab.models import CNN


def forward_backward(model, x):
    def run():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    return run


def interleaved(base_fn, fn, device, repeats: int) -> tuple[float, float, float, float, int]:
    """(median base s, median fn s, median of the per-pair ratios, their spread max/min, peak
    extra bytes of fn). The two are timed alternately, so a slow spell on a shared machine
    slows both sides of a pair; the per-pair ratio is the result."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    base_fn()
    with PeakMemory(device) as mem:
        fn()
        sync()
    bases, times, ratios = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        base_fn()
        sync()
        bases.append(time.perf_counter() - start)
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
        ratios.append(times[-1] / bases[-1])
    return (statistics.median(bases), statistics.median(times), statistics.median(ratios),
            max(ratios) / min(ratios), mem.peak)


def empirical_table(channels, n, methods, device, repeats) -> dict:
    print(f"{'channels':>8} {'method':>10} {'chosen':>10} {'median s':>9} {'fwd+bwd s':>9} "
          f"{'÷ fwd+bwd':>10} {'spread':>7} {'peak MB':>8}")
    ratios = {}
    for width in channels:
        model = CNN(1, width, 3, out_dim=1, activation="relu", seed=0, device=device)
        x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(device)
        for method in methods:
            chosen = resolve_method(model, x, None, method)
            fn = lambda: empirical_ntk(model, x, method=method, mode="trace")  # noqa: E731
            reps = repeats if method in ("auto", "structured") else 1  # jacrev, ntvp: minutes
            base, seconds, ratio, spread, peak = interleaved(forward_backward(model, x), fn, device, reps)
            ratios[(width, method)] = ratio
            print(f"{width:>8} {method:>10} {chosen:>10} {seconds:>9.3f} {base:>9.3f} {ratio:>10.2f} "
                  f"{spread:>7.2f} {peak / 2**20:>8.0f}")
    return ratios


def theta_inf_check(device) -> tuple[float, float]:
    """(seconds, peak extra bytes) of the Θ_∞ case. On the CPU it runs in a fresh child
    process and the peak is that process's VmHWM minus its RSS before the call: in this
    process the allocator keeps the NTK part's freed memory, so a sampled RSS would read ~0."""
    if device.type == "cpu" and not _IN_CHILD:
        done = subprocess.run([sys.executable, __file__, "--theta-inf-child"], capture_output=True,
                              text=True, check=True)
        seconds, peak = done.stdout.split()[-2:]
        return float(seconds), float(peak)
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
    model = CNN(3, 8, 3, out_dim=1, activation="relu", parameterization="ntk", w_std=1.4, b_std=0.1)  # Θ_∞ does not depend on the width
    infinite_width_kernels(x[:2], model=model)  # warm-up
    if device.type == "cpu":
        base = _status_kb("VmRSS")
        start = time.perf_counter()
        infinite_width_kernels(x, model=model)
        return time.perf_counter() - start, (_status_kb("VmHWM") - base) * 1024.0
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        infinite_width_kernels(x, model=model)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, mem.peak


_IN_CHILD = "--theta-inf-child" in sys.argv


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key + ":")).split()[1])


def main() -> None:
    if _IN_CHILD:
        print(*theta_inf_check(torch.device("cpu")))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9, help="interleaved pairs per method")
    parser.add_argument("--all", action="store_true", help="also time jacrev and ntvp")
    parser.add_argument("--channels", default="128,512", help="comma-separated channel counts")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    channels = [int(c) for c in args.channels.split(",")]
    methods = ("auto", "structured", "ntvp", "jacrev") if args.all else ("auto",)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}\n\n"
          f"1. empirical NTK: CNN 1 -> C channels x 3 layers, 8x8, GAP, N = {args.n}, float32")
    ratios = empirical_table(channels, args.n, methods, device, args.repeats)
    seconds, peak = theta_inf_check(device)
    print(f"\n2. Θ_∞: CNN, GAP, depth 3, ReLU, 32 images 3x16x16, float64: {seconds:.2f} s, "
          f"peak extra {peak / 2**20:.0f} MB")
    print("\ntargets:")
    for width, limit in ((512, 3.0), (128, 2.0)):
        if (width, "auto") in ratios:
            r = ratios[(width, "auto")]
            print(f"  auto at {width} channels: {r:.2f}x fwd+bwd (<= {limit:g}x): {'PASS' if r <= limit else 'FAIL'}")
    print(f"  Θ_∞: {seconds:.2f} s (<= 6 s): {'PASS' if seconds <= 6 else 'FAIL'}; "
          f"{peak / 2**30:.2f} GB (<= 2 GB): {'PASS' if peak <= 2 * 2**30 else 'FAIL'}")


if __name__ == "__main__":
    main()
