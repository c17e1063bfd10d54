"""Measure a run's peak resident memory above the imported runtime, next to the preflight
estimate of the same quantity. Used by tests/test_preflight.py and by hand:

    python scripts/measure_peak.py width=2048 depth=3
    python scripts/measure_peak.py data.n_probe=2048 width=256 depth=2

Prints one JSON line: {"measured": bytes, "estimated": bytes, "parts": {...}}. The runtime
(interpreter, torch, matplotlib, ...) is loaded first and excluded from both numbers.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from ntk_lab import build, preflight  # noqa: E402
from ntk_lab.analysis import run_figures  # noqa: E402,F401  (part of the runtime)
from ntk_lab.config import data_settings, validate  # noqa: E402
from ntk_lab.data import make_dataset  # noqa: E402
from ntk_lab.models import network_inputs  # noqa: E402
from ntk_lab.cli import config_dir  # noqa: E402


def _peak_bytes() -> int:
    """This process's peak resident memory. Linux's ru_maxrss is carried over from the parent
    through fork + exec, so a child of a big process (a pytest session that has trained
    networks in-process) would report the parent's peak; VmHWM belongs to this process alone."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def main(overrides: list[str]) -> dict:
    torch.set_num_threads(1)  # the same thread pools in the warm-up and the run
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "progress=false"])
    config = validate(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    data = network_inputs(config.model.name, make_dataset(config.data.name, **data_settings(config.data)))
    dtype = build.DTYPES[config.precision]
    sample = data.x_train[:1].to(dtype)
    shape = preflight.run_shape(
        lambda dev: build.build_model(config, data, dtype, dev), sample,
        itemsize=torch.finfo(dtype).bits // 8, n_train=len(data.x_train), n_test=len(data.x_test),
        n_probe=len(data.x_probe), batch=config.train.batch_size,
        feature_bytes=lambda net: build._structured_feature_bytes(net, sample))
    estimate = preflight.estimate_memory(shape, build.instrumentation(config), "cpu")
    # warm the runtime: a tiny run of the same kind, and a figure (not part of the estimate)
    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            tiny = compose(config_name="config", overrides=[
                "width=8", "depth=1", "train.steps=2", "data.n_probe=4", "data.n_test=8",
                "progress=false", *[o for o in overrides if o.startswith(("data=", "model."))]])
        build.run_experiment(validate(OmegaConf.to_container(tiny, resolve=True)), Path(tmp) / "w")
        plt.close("all")
        base = _peak_bytes()
        build.run_experiment(config, Path(tmp) / "run")
    measured = _peak_bytes() - base
    runtime = sum(p.bytes for p in estimate.parts if p.name == "runtime")
    return {"measured": measured, "estimated": estimate.total - runtime,
            "parts": {p.name: p.bytes for p in estimate.parts}}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
