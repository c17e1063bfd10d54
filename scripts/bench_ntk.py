#!/usr/bin/env python
"""Benchmark the empirical-NTK methods in ONE process (ratios, not absolute seconds, are the
result: the machines are shared and noisy).

For an MLP (in_dim 64, depth 3, widths 256…4096, N probe points, out_dim 1 and 10, float32)
prints per method: median time, the ratio to one forward+backward pass over the same batch,
the ratio to jacrev, and the peak extra memory while the method ran. Then the memory check:
width 4096, depth 4, N = 256 with the default method.

    python scripts/bench_ntk.py                  # CPU, full table
    python scripts/bench_ntk.py --device cuda    # on a GPU (TF32 off while kernels run)
    python scripts/bench_ntk.py --quick          # a small table for a smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import torch

from ntk_lab.kernels import empirical_ntk
from ntk_lab.kernels._common import DEFAULT_MEMORY_BUDGET_BYTES
from ntk_lab.models import MLP

# A general method is skipped when its estimated work would take minutes on a laptop CPU;
# jacrev also when its unchunked N·O×P Jacobian would exceed this many bytes.
JACREV_JACOBIAN_CAP_BYTES = 8 << 30
GENERAL_METHOD_FLOP_CAP = 1.5e12


class PeakMemory:
    """Peak extra memory while a block runs: CUDA allocator peak, or sampled CPU RSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self._rss()
        self.peak_rss = self.base
        self.running = True

        def sample():
            while self.running:
                self.peak_rss = max(self.peak_rss, self._rss())
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak_rss, self._rss()) - self.base


def timed(fn, device, repeats: int) -> tuple[float, int]:
    """(median seconds, peak extra bytes) of fn() over ``repeats`` runs after one warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, peak = [], 0
    with PeakMemory(device) as mem:
        fn()
        sync()
    peak = mem.peak
    first = None
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        first = time.perf_counter() - start
        times.append(first)
        if first > 5.0:  # slow methods: one timed run is enough
            break
    return statistics.median(times), peak


def forward_backward(model, x):
    def run():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    return run


def bench_table(widths, n, out_dims, device, repeats):
    print(f"{'width':>6} {'O':>3} {'method':>10} {'median s':>10} {'÷ fwd+bwd':>10} "
          f"{'÷ jacrev':>9} {'peak MB':>9}")
    results = {}
    for width in widths:
        for out_dim in out_dims:
            model = MLP(64, width, 3, out_dim=out_dim, seed=0, device=device)
            x = torch.randn(n, 64, generator=torch.Generator().manual_seed(1)).to(device)
            n_params = sum(p.numel() for p in model.parameters())
            base, _ = timed(forward_backward(model, x), device, repeats)
            row = {}
            for method in ("structured", "ntvp", "jacrev"):
                jac_bytes = n * out_dim * n_params * 4
                flops = (n * n * out_dim * out_dim * n_params if method == "jacrev"
                         else 3 * n * n * out_dim * n_params)
                if method == "jacrev" and jac_bytes > JACREV_JACOBIAN_CAP_BYTES:
                    print(f"{width:>6} {out_dim:>3} {method:>10}   skipped: its N·O×P Jacobian "
                          f"would be {jac_bytes / 2**30:.1f} GiB (> {JACREV_JACOBIAN_CAP_BYTES >> 30} GiB)")
                    continue
                if method != "structured" and flops > GENERAL_METHOD_FLOP_CAP:
                    print(f"{width:>6} {out_dim:>3} {method:>10}   skipped: ~{flops:.1e} flops "
                          f"(> {GENERAL_METHOD_FLOP_CAP:.1e})")
                    continue
                fn = lambda: empirical_ntk(model, x, method=method, mode="trace")  # noqa: E731
                seconds, peak = timed(fn, device, repeats)
                row[method] = (seconds, peak)
            jac = row.get("jacrev", (None,))[0]
            for method, (seconds, peak) in row.items():
                ratio_jac = f"{jac / seconds:>8.1f}x" if jac else f"{'—':>9}"
                print(f"{width:>6} {out_dim:>3} {method:>10} {seconds:>10.4f} "
                      f"{seconds / base:>10.2f} {ratio_jac} {peak / 2**20:>9.0f}")
            print(f"{width:>6} {out_dim:>3} {'fwd+bwd':>10} {base:>10.4f}")
            results[(width, out_dim)] = (base, row)
    return results


def memory_check(device):
    width, depth, n = 4096, 4, 256
    model = MLP(64, width, depth, out_dim=1, seed=0, device=device)
    x = torch.randn(n, 64, generator=torch.Generator().manual_seed(1)).to(device)
    fn = lambda: empirical_ntk(model, x, method="auto")  # noqa: E731
    seconds, peak = timed(fn, device, 1)
    params_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    print(f"\nmemory check: width {width}, depth {depth}, N {n}, method auto: {seconds:.2f} s, "
          f"peak extra {peak / 2**20:.0f} MB (parameters {params_mb:.0f} MB); target < 4096 MB: "
          f"{'PASS' if peak + params_mb * 2**20 < 4 * 2**30 else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="widths 256, 512 only")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    widths = (256, 512) if args.quick else (256, 512, 1024, 2048, 4096)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"N = {args.n}, float32, in_dim 64, depth 3, memory budget "
          f"{DEFAULT_MEMORY_BUDGET_BYTES >> 20} MB\n")
    results = bench_table(widths, args.n, (1, 10), device, args.repeats)
    key = (2048, 1)
    if key in results:
        base, row = results[key]
        s = row["structured"][0]
        print(f"\ntarget width 2048, O=1: structured ÷ fwd+bwd = {s / base:.2f} (≤ 3)", end="")
        if "jacrev" in row:
            print(f"; jacrev ÷ structured = {row['jacrev'][0] / s:.1f} (≥ 30)")
        else:
            print()
    if not args.quick:
        memory_check(device)


if __name__ == "__main__":
    main()
