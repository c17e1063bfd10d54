"""Will a run fit in memory? An estimate of its peak, made before anything large is allocated.

The network is built on PyTorch's ``meta`` device (shapes, no storage), so counting its
parameters and its activations costs nothing even at width 10⁸. The estimate adds up what a
run holds at once (bytes; P parameters, B bytes per element of the run's precision, N probe
points, K checkpoints):

| part | what | knob |
| --- | --- | --- |
| parameters | P·B × (weights, gradients, θ_0 for ``param_change``, optimizer state, the frozen θ_0 copy when a metric needs one, the linearized model's θ_0 + Δθ + a jvp tangent, the centered model's frozen copy) + three temporaries of the largest tensor's size | width, depth |
| training activations | batch × (activations per sample) × B × 2 (kept for backward, and their gradients) | train.batch_size / data.n_train |
| evaluation forward | (n_train + n_test) × (widest layer) × B × 2 | data.n_test |
| probe kernels | N² × (Θ_t and its Gram temporaries 5B, float64 copies of Θ_t, Θ_0, Θ_∞, NNGP_∞ and a difference 5·8, the stored Θ_t per ``ntk.store`` and the stored per-layer Θ_{l,t}) | data.n_probe (or ntk.store) |
| kernel geometry | N² × (per-layer kernels at θ_t and θ_0 and their stacking temporary 3·L·B, the conjugate kernel at θ_t and θ_0 2·8), L layers | data.n_probe |
| NTK features | the structured features of the probe set (twice: θ_t and θ_0's), or Jacobian chunks capped by the budget | ntk.memory_budget_mb |
| infinite-width prediction | (n_train + n_test) × n_train × 8 × 2 + n_train² × 8 × 3 | data.n_train |
| runtime | the Python process with torch, Hydra and pandas loaded (CPU only) | — |

It is compared with what is free: ``MemAvailable`` and the headroom under this process's
cgroup memory limits (v1 or v2, its own cgroup and every ancestor, as under Slurm or in a
container) on the CPU, ``torch.cuda.mem_get_info`` on a GPU. When neither can be read the run
is not refused, and :class:`MemoryCheck` records that the free memory was unknown.
``tests/test_preflight.py`` holds the estimate against measured peaks of small runs (within a
factor of 1.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import nn

from ntk_lab.measures.checkpoint_geometry import layers_to_store
from ntk_lab.records.storage import plan_storage

RUNTIME_BYTES = 420 * 10**6
"""Resident size of the run process before it allocates anything of its own: the interpreter
with torch, numpy, pandas, matplotlib and Hydra imported (measured 380–450 MB on Linux,
torch 2.13 CPU build)."""

GB = 10**9


@dataclass(frozen=True)
class MemoryPart:
    """One part of the estimate: its name, its size and the setting that controls it."""

    name: str
    bytes: int
    knob: str


@dataclass
class MemoryEstimate:
    """The parts of a run's peak memory, on one device."""

    device: str
    parts: list[MemoryPart] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.bytes for p in self.parts)

    @property
    def largest(self) -> MemoryPart:
        return max(self.parts, key=lambda p: p.bytes)

    def describe(self) -> str:
        return ", ".join(f"{p.name} {_gb(p.bytes)}" for p in self.parts if p.bytes)


@dataclass(frozen=True)
class RunShape:
    """What the estimate needs to know of a run, in plain numbers (see :func:`run_shape`).

    Attributes:
        n_params: P, trainable parameters; n_frozen: non-trainable parameters and buffers.
        largest_tensor: elements of the largest parameter tensor.
        activations_per_sample: elements of every leaf module's output for one sample.
        widest_layer: the largest leaf output for one sample.
        feature_bytes_per_sample: structured NTK features of one probe point (None: no
            structured factorization; the general methods use the memory budget).
        itemsize: B, bytes per element of the run's precision.
        out_dim: O.
        n_train, n_test, n_probe: data sizes; batch: the training batch.
        n_layers: L, modules owning trainable parameters (per-layer kernels).
    """

    n_params: int
    n_frozen: int
    largest_tensor: int
    activations_per_sample: int
    widest_layer: int
    feature_bytes_per_sample: Optional[int]
    itemsize: int
    out_dim: int
    n_train: int
    n_test: int
    n_probe: int
    batch: int
    n_layers: int = 0


def run_shape(build: Callable[[torch.device], nn.Module], sample: torch.Tensor, *, itemsize: int,
              n_train: int, n_test: int, n_probe: int, batch: Optional[int],
              feature_bytes: Optional[Callable[[nn.Module], Optional[int]]] = None) -> RunShape:
    """Measure a network's sizes on the ``meta`` device (no storage is allocated).

    Args:
        build: builds the network on the device it is given.
        sample: one input (1, …) (its values are not used).
        itemsize: bytes per element of the run's precision.
        n_train, n_test, n_probe: data sizes; batch: mini-batch size (None: full batch).
        feature_bytes: the structured features' bytes per probe point for this network, or
            None when it has no structured factorization.
    """
    meta = torch.device("meta")
    with torch.device(meta):
        model = build(meta)
    params = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad] + list(model.buffers())
    outputs: list[int] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(_numel(out))) for m in leaves]
    try:
        with torch.no_grad():
            out = model(sample.to(meta))
    finally:
        for h in hooks:
            h.remove()
    return RunShape(
        n_params=sum(p.numel() for p in params), n_frozen=sum(t.numel() for t in frozen),
        largest_tensor=max((p.numel() for p in params), default=0),
        activations_per_sample=sum(outputs), widest_layer=max(outputs, default=0),
        feature_bytes_per_sample=feature_bytes(model) if feature_bytes else None,
        itemsize=itemsize, out_dim=int(out.shape[-1]), n_train=n_train, n_test=n_test,
        n_probe=n_probe, batch=min(batch or n_train, n_train),
        n_layers=sum(1 for m in model.modules()
                     if any(p.requires_grad for p in m.parameters(recurse=False))),
    )


def _numel(out) -> int:
    return out.numel() if isinstance(out, torch.Tensor) else 0


@dataclass(frozen=True)
class Instrumentation:
    """What the run measures besides training (plain flags from the validated config)."""

    ntk_enabled: bool = True
    jac_change: bool = True
    n_checkpoints: int = 21
    memory_budget_bytes: int = 1 << 30
    store: str = "auto"
    store_dtype: str = "auto"
    store_max_mb: int = 256
    linearized: bool = False
    infinite_width: bool = True
    kappa_hessian: bool = False
    centered: bool = False
    optimizer_states: int = 0  # tensors of size P the optimizer keeps (SGD 0, momentum 1, Adam 2)


def estimate_memory(shape: RunShape, inst: Instrumentation, device: str = "cpu") -> MemoryEstimate:
    """The peak memory of a run, part by part (see the module docstring)."""
    s, b = shape, shape.itemsize
    features_fit = (s.feature_bytes_per_sample is not None and
                    s.feature_bytes_per_sample * s.n_probe <= inst.memory_budget_bytes // 2)
    initial_copy = inst.kappa_hessian or (inst.ntk_enabled and inst.jac_change and not features_fit)
    copies = (3 + inst.optimizer_states + int(initial_copy) + 3 * int(inst.linearized)
              + int(inst.centered))
    est = MemoryEstimate(device)
    # + 3 tensors of the largest parameter's size alive at once: autograd's weight gradient
    # and its scaled copy before they are added into .grad, param_change's θ_t − θ_0, the
    # allocator's slack (calibrated against measured peaks: tests/test_preflight.py)
    est.parts.append(MemoryPart("parameters", (copies * s.n_params + s.n_frozen + 3 * s.largest_tensor) * b,
                                "width (or depth)"))
    est.parts.append(MemoryPart("training activations", 2 * s.batch * s.activations_per_sample * b,
                                "train.batch_size or data.n_train"))
    est.parts.append(MemoryPart("evaluation forward", 2 * (s.n_train + s.n_test) * s.widest_layer * b,
                                "data.n_test"))
    if inst.ntk_enabled:
        plan = plan_storage(s.n_probe, inst.n_checkpoints, _dtype(b), store=inst.store,
                            store_dtype=inst.store_dtype, max_mb=inst.store_max_mb)
        matrix = s.n_probe * s.n_probe
        est.parts.append(MemoryPart("probe kernels", matrix * (5 * b + 5 * 8) + plan.bytes
                                    + _stored_layer_kernel_bytes(s, inst, plan),
                                    "data.n_probe (or ntk.store)"))
        est.parts.append(MemoryPart("kernel geometry", matrix * (3 * s.n_layers * b + 2 * 8),
                                    "data.n_probe"))
        if features_fit:
            features = 2 * s.feature_bytes_per_sample * s.n_probe
        elif s.feature_bytes_per_sample is not None:
            features = inst.memory_budget_bytes // 2 + 2 * s.feature_bytes_per_sample
        else:
            features = inst.memory_budget_bytes
        est.parts.append(MemoryPart("NTK features", features, "ntk.memory_budget_mb"))
        if inst.infinite_width:
            n_all = s.n_train + s.n_test
            est.parts.append(MemoryPart("infinite-width prediction",
                                        8 * (2 * n_all * s.n_train + 3 * s.n_train**2), "data.n_train"))
    if device == "cpu":
        est.parts.append(MemoryPart("runtime", RUNTIME_BYTES, "nothing"))
    return est


def _stored_layer_kernel_bytes(s: RunShape, inst: Instrumentation, plan) -> int:
    """The per-layer kernels Θ_{l,t} kept for kernels.pt, at the level the run will choose
    (:func:`ntk_lab.measures.checkpoint_geometry.layers_to_store`): kept × L × N² entries."""
    itemsize = torch.finfo(plan.theta_dtype or _dtype(s.itemsize)).bits // 8
    level = layers_to_store(plan.level, s.n_probe, s.n_layers, inst.n_checkpoints, itemsize, plan.bytes,
                            inst.store_max_mb, explicit=inst.store != "auto")
    kept = {"all": inst.n_checkpoints, "ends": min(2, inst.n_checkpoints), "none": 0}[level]
    return kept * s.n_layers * s.n_probe * s.n_probe * itemsize


def _dtype(itemsize: int) -> torch.dtype:
    return torch.float64 if itemsize == 8 else torch.float32


UNKNOWN_WHERE = "unknown (could not read MemAvailable or a cgroup limit)"

CGROUP_UNLIMITED_FLOOR = 1 << 62
"""A cgroup limit this large is no limit, when the machine's RAM cannot be read to compare it
with: cgroup v1 writes "no limit" as its largest page count in bytes (9223372036854771712 with
4 KiB pages, other values near 2⁶³ with other page sizes)."""


class FreeMemory(NamedTuple):
    """What the run's device has free: ``bytes`` (None when it could not be read — then
    nothing is refused) and ``where`` they were read, as the refusal and summary.json say it."""

    bytes: Optional[int]
    where: str


def available_memory(device: torch.device, root: Path = Path("/")) -> FreeMemory:
    """What is free for the run: on a GPU what CUDA reports; on the CPU the smaller of
    ``MemAvailable`` and the headroom under this process's cgroup memory limits (a Slurm job's
    or a container's, which the kernel enforces however much RAM is free). ``root`` is the
    file-system root /proc and /sys are read under (a fake tree in tests)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return FreeMemory(int(free), f"free on {device}")
    available = _meminfo(root, "MemAvailable")
    headroom = _cgroup_headroom(root)
    if headroom is not None and (available is None or headroom[0] < available):
        return FreeMemory(headroom[0], f"left under this job's memory limit ({headroom[1]})")
    if available is None:
        return FreeMemory(None, UNKNOWN_WHERE)
    return FreeMemory(available, "of RAM available")


def _meminfo(root: Path, key: str) -> Optional[int]:
    """A field of /proc/meminfo in bytes (``MemAvailable``, ``MemTotal``), None when unreadable
    (not Linux)."""
    try:
        for line in (root / "proc" / "meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# Where each cgroup version keeps a cgroup's limit and usage, under /sys/fs/cgroup; a v2 limit
# of "max" is no limit.
_CGROUP_FILES = {"v2": ("", "memory.max", "memory.current"),
                 "v1": ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes")}


def _cgroup_headroom(root: Path = Path("/")) -> Optional[tuple[int, str]]:
    """(limit − usage, "cgroup <version> <path>") of the tightest memory limit over this
    process's cgroup and its ancestors (a parent's limit applies to its children too), in the
    v2 hierarchy and the v1 memory controller's; None when no limit is set or none is readable.
    A limit at or above the machine's RAM is no limit (v1's "unlimited" is such a number)."""
    no_limit_from = _meminfo(root, "MemTotal") or CGROUP_UNLIMITED_FLOOR
    best: Optional[tuple[int, str]] = None
    for version, path in _own_cgroups(root):
        mount, limit_file, usage_file = _CGROUP_FILES[version]
        base = root / "sys" / "fs" / "cgroup" / mount if mount else root / "sys" / "fs" / "cgroup"
        parts = [p for p in path.split("/") if p and p != "."]
        if ".." in parts:  # outside this cgroup namespace: only the mounted root is ours
            parts = []
        for depth in range(len(parts), -1, -1):
            folder = base.joinpath(*parts[:depth])
            headroom = _headroom(folder / limit_file, folder / usage_file, no_limit_from)
            if headroom is not None and (best is None or headroom < best[0]):
                best = (headroom, f"cgroup {version} /{'/'.join(parts[:depth])}")
    return best


def _own_cgroups(root: Path) -> list[tuple[str, str]]:
    """(version, path in its hierarchy) of this process's memory cgroups from
    /proc/self/cgroup: the v2 line ``0::/path`` and the v1 line whose controllers include
    ``memory`` (``4:memory:/path``); empty when unreadable."""
    try:
        text = (root / "proc" / "self" / "cgroup").read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and not controllers:
            found.append(("v2", path))
        elif "memory" in controllers.split(","):
            found.append(("v1", path))
    return found


def _headroom(limit_file: Path, usage_file: Path, no_limit_from: int) -> Optional[int]:
    """limit − usage of one cgroup, None without a (readable) limit."""
    try:
        text = limit_file.read_text().strip()
        if text == "max":
            return None
        limit = int(text)
        if limit >= no_limit_from:
            return None
        return max(0, limit - int(usage_file.read_text().strip()))
    except (OSError, ValueError):
        return None


def refusal(estimate: MemoryEstimate, available: Optional[int], where: str) -> Optional[str]:
    """The one-line refusal when the estimate exceeds what is available, else None (also when
    what is available is unknown: a run is refused only on a number read from the system)."""
    if available is None or estimate.total <= available:
        return None
    largest = estimate.largest
    return (f"this run needs about {_gb(estimate.total)} of memory, more than the "
            f"{_gb(available)} {where}; the largest part is {largest.name} "
            f"({_gb(largest.bytes)}): lower {largest.knob}")


@dataclass(frozen=True)
class MemoryCheck:
    """The preflight's outcome for one run: the estimate and what was free, or why the run
    could not be sized (then nothing is refused). :meth:`record` is what summary.json keeps,
    so that a run that was not checked says so instead of passing for one that fit."""

    estimate: Optional[MemoryEstimate] = None
    free: Optional[FreeMemory] = None
    unsized: Optional[str] = None

    @property
    def refusal(self) -> Optional[str]:
        if self.estimate is None or self.free is None:
            return None
        return refusal(self.estimate, self.free.bytes, self.free.where)

    def record(self) -> dict[str, Any]:
        """Plain values: bytes estimated and free (None when unknown), where the free memory
        was read, whether the run was refused, and why it was not sized."""
        return {
            "estimate_bytes": None if self.estimate is None else self.estimate.total,
            "available_bytes": None if self.free is None else self.free.bytes,
            "available": None if self.free is None else self.free.where,
            "refused": self.refusal is not None,
            "not_sized": self.unsized,
        }


def could_not_size(err: BaseException, what: str = "the network") -> MemoryCheck:
    """The check of a run whose network :func:`run_shape` could not build on the ``meta``
    device (a user's module that allocates real tensors, or calls ops without a meta kernel):
    no estimate, no refusal, and a one-line reason."""
    detail = f"{type(err).__name__}: {err}".splitlines()[0]
    return MemoryCheck(unsized=f"could not size {what} on the meta device ({detail}); its "
                               f"memory was not checked before the run")


def _gb(n: int) -> str:
    gb = n / GB
    if gb >= 100:
        return f"{gb:,.0f} GB"
    return f"{gb:.2f} GB" if gb < 10 else f"{gb:.1f} GB"

