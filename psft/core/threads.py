"""How many CPU threads torch uses: chosen from the CPUs this process may actually run on.

torch's default is the machine's physical core count. In a container, under `taskset`, or beside other busy
jobs that is too many: OpenMP threads then wait on each other and a step can be several times slower than
with one thread. `configure_threads` picks the count once per command, in this order:

1. an explicit psft option (`--threads N`, `threads:` in a YAML);
2. the `OMP_NUM_THREADS` environment variable;
3. the CPUs available to the process (CPU affinity, capped by a cgroup CPU quota), minus the load the
   rest of the machine already keeps busy (whole units of the 1-minute load average), divided among `jobs`
   and among the processes of one `accelerate launch` / `torchrun` on this machine (`LOCAL_WORLD_SIZE`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from psft.errors import UserError


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup (v2 or v1) CPU quota if one is set."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, quota)) if quota else max(1, cpus)


def _cgroup_quota() -> int | None:
    """CPUs allowed by the cgroup CPU quota, rounded up; None where there is no quota."""
    v2 = Path("/sys/fs/cgroup/cpu.max")
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else math.ceil(int(quota) / int(period))
        v1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        if v1.is_file():
            quota = int(v1.read_text())
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            return None if quota <= 0 else math.ceil(quota / period)
    except (OSError, ValueError):
        return None
    return None


def choose_threads(requested: int | None = None, jobs: int = 1) -> tuple[int, str]:
    """(thread count, the reason in words) without changing anything; see the module docstring."""
    if requested is not None:
        if requested < 1:
            raise UserError(f"threads must be >= 1, got {requested}")
        return requested, "set by the threads option"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise UserError(f"OMP_NUM_THREADS must be a whole number, got {env!r}") from None
        if value >= 1:
            return value, "set by OMP_NUM_THREADS"
    jobs *= int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # processes of one launch on this machine
    cpus = available_cpus()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    idle = max(1, min(cpus, cpus - int(load)))  # CPUs not already kept busy by whole other jobs
    per_job = max(1, idle // max(1, jobs))
    reason = f"{cpus} CPUs available, load {load:.1f}" + (f", {jobs} jobs" if jobs > 1 else "")
    return per_job, reason


def configure_threads(requested: int | None = None, jobs: int = 1, announce: bool = True) -> int:
    """Set torch's intra-op thread count (see `choose_threads`) and say so in one line on stdout (stderr is
    kept for errors, one line each)."""
    import torch

    threads, reason = choose_threads(requested, jobs)
    torch.set_num_threads(threads)
    if announce and os.environ.get("LOCAL_RANK", "0") == "0":  # one line per machine, not per process
        print(
            f"psft: {threads} CPU thread{'s' if threads > 1 else ''} ({reason}; override with --threads N "
            "or OMP_NUM_THREADS)",
            flush=True,
        )
    return threads
