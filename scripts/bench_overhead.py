"""What the kernel instrumentation costs next to the training it observes.

Times the default run and the baseline run (``ntk.enabled=false lazy.infinite_width=false``:
the same data, steps and loss logging, no kernels and no Θ_∞) in ONE process, interleaved and
repeated (this machine is shared and noisy; the ratio of the fastest of each is reported), at
widths 1024 and 4096. Targets: ratio ≤ 1.5 at width 1024, ≤ 1.3 at 4096.

Then, unless ``--no-probe``, the big-probe run: ``data.n_probe=4096 width=1024 depth=3`` with
the default 20 checkpoints, in a child process, its wall time and peak RSS (targets ≤ 5 min,
≤ 4 GB on a 2-core CPU).

    python scripts/bench_overhead.py                 # both parts
    python scripts/bench_overhead.py --widths 1024 --repeats 3 --no-probe
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ntk_lab import experiment as build
from ntk_lab.config import validate
from ntk_lab.cli import config_dir

BASELINE = ["ntk.enabled=false", "lazy.infinite_width=false"]
TARGETS = {1024: 1.5, 4096: 1.3}


def _config(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "progress=false"])
    return validate(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))


def _time_run(overrides: list[str], root: Path, name: str) -> float:
    config = _config(overrides)
    start = time.perf_counter()
    outcome = build.run_experiment(config, root / name)
    wall = time.perf_counter() - start
    if outcome.status != "ok":
        raise SystemExit(f"bench_overhead: the run {overrides} ended {outcome.status}: {outcome.message}")
    return wall


def overhead(widths: list[int], repeats: int) -> list[tuple[int, float, float, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _time_run(["width=64", "train.steps=5"], root, "warmup")  # imports, thread pools, plots
        for width in widths:
            default, baseline = [], []
            for r in range(repeats):  # interleaved, so slow phases of the machine hit both
                default.append(_time_run([f"width={width}"], root, f"d{width}_{r}"))
                baseline.append(_time_run([f"width={width}", *BASELINE], root, f"b{width}_{r}"))
            rows.append((width, min(default), min(baseline), min(default) / min(baseline)))
            print(f"  width {width}: default {['%.2f' % t for t in default]} s, "
                  f"baseline {['%.2f' % t for t in baseline]} s", flush=True)
    return rows


# The child reports its own peak RSS (VmHWM). The children's ru_maxrss would not do: a child
# created by fork+exec inherits the parent's high-water mark, and this process has just run
# the width-4096 runs.
_CHILD = """
import runpy, sys
sys.argv = ["ntk_lab.run", *sys.argv[1:]]
try:
    runpy.run_module("ntk_lab.run", run_name="__main__")
finally:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
    print("VmHWM_kB", hwm[0].split()[1] if hwm else "nan", file=sys.stderr)
"""


def probe_run() -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS GB, exit code) of the n_probe = 4096 run in a child process.
    The CPU seconds (user + system, all threads) say how much of the wall time a loaded
    machine took away: on a quiet 2-core machine wall ≈ CPU / 2 at best."""
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, "data.n_probe=4096", "width=1024", "depth=3",
             "progress=false"], cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
        kb = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("VmHWM_kB")]
        peak = float(kb[-1]) * 1024 / 1e9 if kb else float("nan")
        return wall, cpu, peak, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-probe", action="store_true", help="skip the n_probe=4096 run")
    args = parser.parse_args()
    print("instrumentation overhead: wall(default) / wall(ntk.enabled=false lazy.infinite_width=false)")
    rows = overhead(args.widths, args.repeats)
    print(f"{'width':>6} {'default s':>10} {'baseline s':>11} {'ratio':>6} {'target':>7}")
    for width, d, b, ratio in rows:
        target = TARGETS.get(width)
        verdict = "" if target is None else f"≤ {target}  {'PASS' if ratio <= target else 'FAIL'}"
        print(f"{width:>6} {d:>10.2f} {b:>11.2f} {ratio:>6.2f} {verdict:>7}")
    if not args.no_probe:
        wall, cpu, peak, code = probe_run()
        ok = code == 0 and wall <= 300 and peak <= 4.0
        print(f"n_probe=4096 width=1024 depth=3, 20 checkpoints: {wall:.1f} s ({cpu:.1f} CPU s), peak RSS "
              f"{peak:.2f} GB, exit {code} (targets ≤ 300 s, ≤ 4 GB): {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
