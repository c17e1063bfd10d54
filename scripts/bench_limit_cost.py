"""How good is the run's estimate of Θ_∞'s time? For a few networks, the estimate
(kernels.network_limit.estimate_limit_cost, a timed block of the inputs scaled by the pairs)
against the measured time of the real computation, in ONE process; the ratio is the result
(shared machines are noisy; > 1 means the estimate errs high, as intended).

    python scripts/bench_limit_cost.py
"""

from __future__ import annotations

import time

import torch

from ntk_lab.data import make_dataset
from ntk_lab.kernels.network_limit import estimate_limit_cost, infinite_width_of
from ntk_lab.models import NetworkSpec

CASES = [  # (label, spec, images?, n1, n2)
    ("MLP depth 3, 512 × 256 digits", NetworkSpec("mlp", 1024, 3), False, 512, 256),
    ("ResMLP depth 8, 512 × 256", NetworkSpec("resmlp", 512, 8), False, 512, 256),
    ("CNN flatten depth 3, 256 × 128 8×8 images", NetworkSpec("cnn", 64, 3, readout="flatten"), True, 256, 128),
    ("CNN GAP depth 3, 64 × 64 8×8 images", NetworkSpec("cnn", 64, 3), True, 64, 64),
]


def main() -> None:
    data = make_dataset("digits", n_train=512, n_test=256, n_probe=8)
    print(f"{'case':46s} {'estimate':>10s} {'measured':>10s} {'ratio':>6s}  calibration")
    for label, spec, images, n1, n2 in CASES:
        d = data.as_images() if images else data
        x1, x2 = d.x_train[:n1].double(), d.x_test[:n2].double()
        started = time.perf_counter()
        cost = estimate_limit_cost(spec, d.x_train, n1 * n2)
        calibration = time.perf_counter() - started
        started = time.perf_counter()
        infinite_width_of(spec, x1, x2)
        measured = time.perf_counter() - started
        print(f"{label:46s} {cost.seconds:9.2f}s {measured:9.2f}s {cost.seconds / measured:6.2f}"
              f"  {calibration:.2f} s")
    print(f"torch threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
