"""How fast is Θ_∞ of a globally pooled CNN, against what this CPU can do? Both rates are
measured in ONE process (shared machines are noisy; the ratio is the result):

* the *dual rate*: ReLU's arc-cosine dual (the lab's closed form, the one a ReLU layer of the
  CNN evaluates) on a cache-sized pair tensor, elements per second;
* the *CNN rate*: pair-position updates per second per layer of the full (NNGP_∞, Θ_∞) of a GAP
  CNN (depth 3, ReLU, 3×3 same-padded convolutions) on 1×28×28 images: N(N+1)/2 input pairs
  (the kernel is symmetric) × P² position pairs (P = 784) × depth, divided by the time.

Target: CNN rate ≥ 0.5 × dual rate. The images are real Fashion-MNIST test images when the
files are found (Debian's ``dataset-fashion-mnist``, or data.root's default cache), else
uniform noise of the same shape (the arithmetic is the same).

Both paths are timed in one process: the eager maps (separate torch operations, ~20 memory
passes over each (P, P) tensor per layer) and the compiled ones (``ntk_lab.layers.fused_pairs``:
``torch.compile`` fuses each stencil axis and the ReLU dual into single loops), after a
one-time compile that is printed on its own. History on this project's 2-core CPU (quiet
machine, one process per row):

| code | dual rate | 16 images | 64 images |
| --- | --- | --- | --- |
| first eager maps | 109 M/s | 3.4 s (74 M/s per layer) | 50.6 s (76 M/s) |
| fewer-pass eager maps | 259 M/s | 2.8 s (89 M/s) | 37.6 s (102 M/s) = 0.39 × |
| compiled maps (eager in the same process) | 263 M/s | 1.7 s (150 M/s; eager 2.7 s) | 24.1 s (159 M/s) = 0.61 × (eager 39.4 s = 0.37 ×); compile 6.9 s once |

The compiled maps meet the target (≥ 0.5 × the dual rate; 0.57 × against the ~280 M/s of the
target's wording); counting the one-time compile too, 64 images take 31 s. They agree with the
eager maps to ~1e-12 (tests/test_fused_pairs.py). Timings on a loaded machine vary 5–10× (the
same 64 eager images took 42.6 s and 379 s in one session). neural-tangents 0.6.5 with
``nt.batch(batch_size=8)`` took 19.3 s and 3.3 GB for 16 images.

    python scripts/bench_pooled_cnn_limit.py [N ...] [--device cuda]     # default: 16 64, cpu

On CUDA the kernel is computed on the device (the images are moved there) and its agreement with
the CPU computation on a few images is printed too.
"""

from __future__ import annotations

import argparse
import time

import torch

from ntk_lab.kernels.composed import composed_kernels
from ntk_lab.kernels.network_limit import infinite_width_of
from ntk_lab.layers import fused_pairs
from ntk_lab.layers.activations import get_activation
from ntk_lab.layers.gaussian import gaussian_expectations
from ntk_lab.models import NetworkSpec, build_network
from ntk_lab.models.layer_groups import kernel_layers

DEPTH = 3
DUAL_TILE = (16, 16, 16, 16)  # 65,536 float64 pairs = 512 KiB: cache-sized


def images(n: int) -> tuple[torch.Tensor, str]:
    """(n, 1, 28, 28) float64 test images: Fashion-MNIST's when found, else noise."""
    try:
        from ntk_lab.data import make_dataset
        data = make_dataset("fashion_mnist", n_train=4, n_test=n, n_probe=2).as_images()
        return data.x_test[:n].to(torch.float64), "Fashion-MNIST test images"
    except Exception as error:  # noqa: BLE001 — any failure to find the files: use noise
        generator = torch.Generator().manual_seed(0)
        noise = torch.rand(n, 1, 28, 28, generator=generator, dtype=torch.float64)
        return noise, f"uniform noise ({str(error).splitlines()[0][:60]}…)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dual_rate(device: torch.device, repeats: int = 40) -> float:
    """Elements per second of the ReLU dual on a cache-sized (q11, q12, q22) tile."""
    relu = get_activation("relu")
    g = torch.Generator().manual_seed(1)
    a, b = DUAL_TILE[0], DUAL_TILE[1]
    q11 = 1.0 + torch.rand(a, 1, DUAL_TILE[2], 1, generator=g, dtype=torch.float64)
    q22 = 1.0 + torch.rand(1, b, 1, DUAL_TILE[3], generator=g, dtype=torch.float64)
    q12 = (torch.rand(DUAL_TILE, generator=g, dtype=torch.float64) - 0.5) * 2.0
    q11, q12, q22 = q11.to(device), q12.to(device), q22.to(device)
    gaussian_expectations(relu, q11, q12, q22)  # warm-up
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            gaussian_expectations(relu, q11, q12, q22)
        synchronize(device)
        best = min(best, (time.perf_counter() - started) / repeats)
    return q12.numel() / best


SPEC = NetworkSpec("cnn", 64, DEPTH)  # width is irrelevant to Θ_∞


def kernel_maps(x: torch.Tensor, fused: bool):
    """The CNN's Θ_∞ on x by its composed kernel maps, eager or compiled (what
    ``infinite_width_of`` runs; there the choice is automatic, by the amount of work)."""
    net = build_network(SPEC, tuple(x.shape[1:]), 1, seed=None, dtype=torch.float64,
                        device=torch.device("meta"))
    return composed_kernels(kernel_layers(net), x, fused=fused)


def cnn_rate(n: int, device: torch.device, fused: bool) -> tuple[float, float, str]:
    """(seconds, updates per second per layer, what the images were) for n images."""
    x, source = images(n)
    x = x.to(device)
    synchronize(device)
    started = time.perf_counter()
    kernel_maps(x, fused)
    synchronize(device)
    seconds = time.perf_counter() - started
    positions = x.shape[2] * x.shape[3]
    updates = n * (n + 1) / 2 * positions**2 * DEPTH
    return seconds, updates / seconds, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[16, 64], help="numbers of images")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    dual = dual_rate(device)
    print(f"device: {device}; torch threads: {torch.get_num_threads()}")
    print(f"ReLU dual on a cache-sized tile {DUAL_TILE}: {dual / 1e6:.0f} million per second")
    if device.type != "cpu":
        x, _ = images(4)
        on_device = infinite_width_of(SPEC, x.to(device))[1].cpu()
        on_cpu = infinite_width_of(SPEC, x)[1]
        error = ((on_device - on_cpu).norm() / on_cpu.norm()).item()
        print(f"Θ_∞ on {device} against the CPU, 4 images: relative Frobenius error {error:.1e}")
    x, _ = images(1)
    kernel_maps(x.to(device), False)  # warm-up
    compiled = device.type == "cpu"
    if compiled:
        started = time.perf_counter()
        kernel_maps(x, True)  # compiles the fused maps: once per process (and shape)
        print(f"compiling the fused maps (once per process): {time.perf_counter() - started:.1f} s"
              f"{' — unavailable here: eager maps used' if not fused_pairs.available() else ''}")
    for n in args.sizes:
        for fused in ((False, True) if compiled else (False,)):
            seconds, rate, source = cnn_rate(n, device, fused)
            print(f"GAP CNN depth {DEPTH}, {n} images 1×28×28 ({source}), "
                  f"{'compiled' if fused else 'eager'} maps: {seconds:.1f} s, "
                  f"{rate / 1e6:.0f} million pair-position updates per second per layer, "
                  f"{rate / dual:.2f} × the dual rate (target ≥ 0.5)")


if __name__ == "__main__":
    main()
