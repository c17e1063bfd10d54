"""What the memory preflight counts as free on the CPU: ``MemAvailable`` and the headroom under
this process's cgroup memory limits, read from fake /proc and /sys/fs/cgroup trees (cgroup v1
and v2, a limit set on a parent, "max", v1's "no limit" number, unreadable files); free
memory that cannot be read at all refuses nothing and says so; a network that cannot be
sized says so too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ntk_lab.training import preflight
from ntk_lab.training.preflight import UNKNOWN_WHERE, FreeMemory, available_memory

GIB = 1 << 30
CPU = torch.device("cpu")
V1_NO_LIMIT = 9223372036854771712  # what cgroup v1 writes for "no limit" with 4 KiB pages


def fake_root(tmp_path: Path, cgroup: str | None, files: dict[str, object],
              available: int | None = 16 * GIB, total: int | None = 32 * GIB) -> Path:
    """A root holding proc/self/cgroup (``cgroup``, absent when None), proc/meminfo (the
    fields given) and ``files`` under sys/fs/cgroup (path -> content)."""
    root = tmp_path / "root"
    (root / "proc" / "self").mkdir(parents=True)
    if cgroup is not None:
        (root / "proc" / "self" / "cgroup").write_text(cgroup)
    meminfo = [f"MemTotal: {total // 1024} kB" if total is not None else "",
               "MemFree: 1024 kB",
               f"MemAvailable: {available // 1024} kB" if available is not None else ""]
    if available is not None or total is not None:
        (root / "proc" / "meminfo").write_text("\n".join(line for line in meminfo if line) + "\n")
    for path, content in files.items():
        target = root / "sys" / "fs" / "cgroup" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{content}\n")
    return root


def v2(path: str, limit: object, current: int) -> dict[str, object]:
    return {f"{path}/memory.max".lstrip("/"): limit, f"{path}/memory.current".lstrip("/"): current}


def v1(path: str, limit: int, usage: int) -> dict[str, object]:
    base = f"memory/{path}".rstrip("/")
    return {f"{base}/memory.limit_in_bytes": limit, f"{base}/memory.usage_in_bytes": usage}


def test_v2_own_cgroup_limit(tmp_path):
    root = fake_root(tmp_path, "0::/slurm/job_7\n", v2("slurm/job_7", 4 * GIB, 1 * GIB))
    assert available_memory(CPU, root) == FreeMemory(
        3 * GIB, "left under this job's memory limit (cgroup v2 /slurm/job_7)")


def test_v2_a_parent_limit_applies_to_its_children(tmp_path):
    """The job's own cgroup has no limit (or a loose one); its parent's is the tight one."""
    files = {**v2("user.slice", 2 * GIB, GIB + GIB // 2),      # 0.5 GiB left for everyone
             **v2("user.slice/job", "max", GIB),
             **v2("user.slice/job/step", 8 * GIB, GIB)}
    root = fake_root(tmp_path, "0::/user.slice/job/step\n", files)
    assert available_memory(CPU, root) == FreeMemory(
        GIB // 2, "left under this job's memory limit (cgroup v2 /user.slice)")


def test_v2_limit_at_the_mounted_root_counts(tmp_path):
    """In a container with its own cgroup namespace the process is at ``/``, and the limit
    is on the mounted root itself."""
    root = fake_root(tmp_path, "0::/\n", v2("", 6 * GIB, 2 * GIB))
    assert available_memory(CPU, root) == FreeMemory(
        4 * GIB, "left under this job's memory limit (cgroup v2 /)")


def test_v2_path_outside_the_namespace_reads_only_the_mounted_root(tmp_path):
    files = {**v2("", 6 * GIB, 2 * GIB), **v2("other", GIB, 0)}
    root = fake_root(tmp_path, "0::/../other\n", files)
    assert available_memory(CPU, root).bytes == 4 * GIB


def test_v2_max_everywhere_is_no_limit(tmp_path):
    files = {**v2("a", "max", GIB), **v2("a/b", "max", GIB)}
    root = fake_root(tmp_path, "0::/a/b\n", files)
    assert available_memory(CPU, root) == FreeMemory(16 * GIB, "of RAM available")


def test_a_limit_looser_than_memavailable_leaves_memavailable(tmp_path):
    root = fake_root(tmp_path, "0::/job\n", v2("job", 20 * GIB, GIB))
    assert available_memory(CPU, root) == FreeMemory(16 * GIB, "of RAM available")


def test_usage_over_the_limit_leaves_nothing(tmp_path):
    root = fake_root(tmp_path, "0::/job\n", v2("job", GIB, 2 * GIB))
    assert available_memory(CPU, root).bytes == 0


@pytest.mark.parametrize("line", ["4:memory:/job/7\n", "5:cpu,memory,pids:/job/7\n"],
                         ids=["memory", "controller-list"])
def test_v1_memory_controller(tmp_path, line):
    cgroups = f"9:name=systemd:/\n{line}3:cpuset:/\n0::/\n"  # hybrid: a v2 line without files
    root = fake_root(tmp_path, cgroups, {**v1("job/7", 2 * GIB, GIB // 2),
                                          **v1("", V1_NO_LIMIT, 10 * GIB)})
    assert available_memory(CPU, root) == FreeMemory(
        GIB + GIB // 2, "left under this job's memory limit (cgroup v1 /job/7)")


def test_v1_no_limit_numbers_are_no_limit(tmp_path):
    """v1's largest number, and any limit at or above the machine's RAM (32 GiB here)."""
    files = {**v1("job", V1_NO_LIMIT, GIB), **v1("", 64 * GIB, 10 * GIB)}
    root = fake_root(tmp_path, "4:memory:/job\n", files)
    assert available_memory(CPU, root) == FreeMemory(16 * GIB, "of RAM available")


def test_v1_no_limit_without_meminfo_is_unknown(tmp_path):
    """The machine's RAM unreadable: v1's "no limit" number is still recognised as one."""
    root = fake_root(tmp_path, "4:memory:/job\n", v1("job", V1_NO_LIMIT, GIB),
                     available=None, total=None)
    assert available_memory(CPU, root) == FreeMemory(None, UNKNOWN_WHERE)


def test_a_cgroup_limit_without_meminfo_is_still_used(tmp_path):
    root = fake_root(tmp_path, "0::/job\n", v2("job", 3 * GIB, GIB), available=None, total=None)
    assert available_memory(CPU, root).bytes == 2 * GIB


@pytest.mark.parametrize("case", ["limit-is-a-folder", "garbage", "no-usage", "no-proc-cgroup"])
def test_unreadable_cgroup_files_fall_back_to_memavailable(tmp_path, case):
    files = v2("job", 2 * GIB, GIB)
    cgroup = "0::/job\n"
    if case == "garbage":
        files["job/memory.max"] = "two gigabytes"
    elif case == "no-usage":
        del files["job/memory.current"]
    elif case == "no-proc-cgroup":
        cgroup = None
    root = fake_root(tmp_path, cgroup, files)
    if case == "limit-is-a-folder":  # unreadable even as root, unlike a chmod
        limit = root / "sys" / "fs" / "cgroup" / "job" / "memory.max"
        limit.unlink()
        limit.mkdir()
    assert available_memory(CPU, root) == FreeMemory(16 * GIB, "of RAM available")


def test_nothing_readable_is_unknown_and_refuses_nothing(tmp_path):
    """As on a system without /proc: the run is not refused, and the record says why."""
    free = available_memory(CPU, tmp_path / "empty")
    assert free == FreeMemory(None, UNKNOWN_WHERE)
    huge = preflight.MemoryEstimate("cpu", [preflight.MemoryPart("parameters", 10**18, "width")])
    assert preflight.refusal(huge, free.bytes, free.where) is None
    check = preflight.MemoryCheck(huge, free)
    assert check.refusal is None
    assert check.record() == {"estimate_bytes": 10**18, "available_bytes": None,
                              "available": UNKNOWN_WHERE, "refused": False, "not_sized": None}


def test_a_known_shortfall_is_refused_and_recorded(tmp_path):
    root = fake_root(tmp_path, "0::/job\n", v2("job", 2 * GIB, GIB))
    huge = preflight.MemoryEstimate("cpu", [preflight.MemoryPart("parameters", 10**12, "width")])
    check = preflight.MemoryCheck(huge, available_memory(CPU, root))
    assert "left under this job's memory limit (cgroup v2 /job)" in check.refusal
    assert check.record()["refused"] is True and check.record()["available_bytes"] == GIB


class NeedsRealTensors(nn.Module):
    """A user's module that reads a value while it is built: impossible on the meta device."""

    def __init__(self):
        super().__init__()
        self.scale = float(torch.randn(1).abs().item()) + 1.0
        self.linear = nn.Linear(2, 1)

    def forward(self, x):
        return self.scale * self.linear(x)


def test_a_network_that_cannot_be_sized_gives_a_reason_and_no_refusal():
    with pytest.raises(Exception) as info:
        preflight.run_shape(lambda dev: NeedsRealTensors(), torch.zeros(1, 2), itemsize=4,
                            n_train=4, n_test=4, n_probe=4, batch=None)
    check = preflight.could_not_size(info.value, "the custom module")
    assert check.refusal is None and check.estimate is None
    assert check.unsized.startswith("could not size the custom module on the meta device (")
    assert type(info.value).__name__ in check.unsized and "\n" not in check.unsized
    assert check.record()["not_sized"] == check.unsized
    assert check.record()["estimate_bytes"] is None and check.record()["refused"] is False
