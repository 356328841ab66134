"""How many intra-op threads torch uses: one policy, applied once per process by every surface and trainer.

People run ardiff beside a browser, a build or a training run. torch's default (one thread per core, worker
threads that spin between parallel regions) is right on an idle machine and badly wrong on a busy one: a
thread whose core another process holds makes every parallel region wait for it, and a spinning thread takes
a core from the work it waits for (several-fold slower continuations; bench/RESULTS.md, 2026-12-07). So the
policy counts

- the cores this process may run on (`os.sched_getaffinity`), capped by a cgroup CPU quota (v2 `cpu.max`,
  v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), as containers and `systemd-run -p CPUQuota=` set them;
- the cores other processes keep busy right now: `/proc/stat` sampled over the time torch takes to import
  (so measuring costs nothing), minus this process's own CPU time in that window;

and uses the cores left (at least one), less `reserve` (a UI thread's core) and shared between `processes`
(DDP ranks on one machine). An explicit choice wins: `--threads N` (every command line), `ARDIFF_THREADS`,
or `OMP_NUM_THREADS`, in that order.

OpenMP's wait policy is read when torch loads OpenMP, so it is set here, before torch is imported, unless
the user set it: PASSIVE (idle worker threads sleep instead of spinning) when other tasks are runnable as
ardiff starts (/proc/loadavg, a few looks over about 20 ms), so threads that turn out one too many give
their core back; the OpenMP default otherwise (spinning briefly between parallel regions is what makes many
small kernels fast on an idle machine).

The decisions are pure functions of their inputs and the readers take their files as arguments (tests feed
them fake /proc and cgroup files); only `apply_thread_policy` and `describe_current` import torch.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ENV_THREADS = "ARDIFF_THREADS"
# Other processes' load below this many cores is background noise (an idle browser, a terminal): not a core.
NOISE_CORES = 0.25
MIN_SAMPLE_S = 0.1  # the shortest /proc/stat window (10 ticks at USER_HZ = 100) worth a decision


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative busy and total ticks of each CPU (from /proc/stat), and this process's CPU seconds."""

    busy: dict[int, int]
    total: dict[int, int]
    own_seconds: float
    at: float  # time.monotonic() of the reading


@dataclass(frozen=True)
class ThreadChoice:
    """What the policy decided, and why, in words a person can check."""

    threads: int
    source: str  # "policy" | "--threads" | "ARDIFF_THREADS" | "OMP_NUM_THREADS"
    cores: int = 0  # cores this process may use (affinity and quota); 0 when not looked at
    busy_elsewhere: float = 0.0  # cores other processes kept busy while ardiff started
    wait_policy: str = "default"  # OMP_WAIT_POLICY as OpenMP got it: "PASSIVE", "ACTIVE" or "default"

    def describe(self) -> str:
        """e.g. '1 thread (2 cores, 1.0 busy with other work)' or '4 threads (--threads)'."""
        n = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        if self.source != "policy":
            return f"{n} ({self.source})"
        busy = (f", {self.busy_elsewhere:.1f} busy with other work" if self.busy_elsewhere >= NOISE_CORES
                else "")
        passive = ", passive wait" if self.wait_policy == "PASSIVE" else ""
        return f"{n} ({self.cores} core{'s' if self.cores != 1 else ''}{busy}{passive})"


# -- reading the machine (pure parsers, plus thin readers with injectable roots) ------------------------


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max` ("max 100000" or "150000 100000") -> the quota in cores, None when unlimited."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    quota = int(parts[0])
    period = int(parts[1]) if len(parts) > 1 else 100000
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota_us: str, period_us: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` (-1 = unlimited) and `cpu.cfs_period_us` -> the quota in cores or None."""
    quota, period = int(quota_us.strip()), int(period_us.strip())
    return quota / period if quota > 0 and period > 0 else None


def read_cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup"),
                   proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2, else v1), None when there is none or it is
    unreadable: a missing quota must never stop ardiff."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    v2, v1 = "/", "/"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0" and not parts[1]:
            v2 = parts[2]
        elif len(parts) == 3 and "cpu" in parts[1].split(","):
            v1 = parts[2]
    candidates = [cgroup_root / v2.lstrip("/") / "cpu.max", cgroup_root / "cpu.max"]
    for path in candidates:
        try:
            return parse_cpu_max(path.read_text())
        except (OSError, ValueError):
            continue
    for base in (cgroup_root / "cpu" / v1.lstrip("/"), cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
        try:
            return parse_cfs_quota((base / "cpu.cfs_quota_us").read_text(),
                                   (base / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
    return None


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity; all of them where the OS has no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def parse_proc_stat(text: str) -> tuple[dict[int, int], dict[int, int]]:
    """Per-CPU (busy, total) ticks from /proc/stat. Busy is everything but idle and iowait; steal counts as
    busy (another virtual machine has the core); guest time is already inside user time."""
    busy, total = {}, {}
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *values = line.split()
        ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
        ticks += [0] * (8 - len(ticks))
        cpu = int(name[3:])
        total[cpu] = sum(ticks)
        busy[cpu] = total[cpu] - ticks[3] - ticks[4]
    return busy, total


def read_cpu_times(proc_stat: Path = Path("/proc/stat")) -> CpuTimes | None:
    """A /proc/stat reading (None where there is no /proc: then the load is not known)."""
    try:
        text = proc_stat.read_text()
    except OSError:
        return None
    busy, total = parse_proc_stat(text)
    return CpuTimes(busy, total, time.process_time(), time.monotonic()) if total else None


def busy_elsewhere(before: CpuTimes, after: CpuTimes, cpus: set[int]) -> float:
    """Cores that processes other than this one kept busy between two readings, on the CPUs in `cpus`."""
    seen = [c for c in cpus if c in before.total and c in after.total]
    ticks = sum(after.total[c] - before.total[c] for c in seen)
    if not seen or ticks <= 0:
        return 0.0
    busy_ticks = sum(after.busy[c] - before.busy[c] for c in seen)
    busy_cores = len(seen) * busy_ticks / ticks  # cores' worth of busy time on our CPUs over the window
    own_cores = (after.own_seconds - before.own_seconds) / max(after.at - before.at, 1e-6)
    return max(0.0, busy_cores - own_cores)


# -- the decision (pure) ---------------------------------------------------------------------------------


def usable_cores(allowed: int, quota: float | None) -> int:
    """Cores this process may use: its affinity, capped by a cgroup quota (rounded down: threads beyond the
    quota only get throttled), at least one."""
    cores = max(1, allowed)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota + 1e-9)))
    return cores


def decide_threads(cores: int, busy_elsewhere: float, reserve: int = 0, processes: int = 1) -> int:
    """Threads for one process: the usable cores not kept busy by others (load under NOISE_CORES ignored;
    a partly busy core counts as taken, since one thread too many costs far more than one too few), less
    `reserve` while more than one is left, shared by `processes` ranks; at least one."""
    taken = max(0, math.ceil(busy_elsewhere - NOISE_CORES))
    free = max(1, cores - taken)
    if free > reserve:
        free -= reserve
    return max(1, free // max(1, processes))


def choose_wait_policy(user_value: str | None, busy_elsewhere: float) -> str | None:
    """The OMP_WAIT_POLICY to set before OpenMP loads: None leaves it alone (the user set it, or the
    machine is idle and OpenMP's default spin-then-sleep is fastest); "PASSIVE" on a busy machine."""
    if user_value:
        return None
    return "PASSIVE" if busy_elsewhere >= NOISE_CORES else None


def parse_thread_count(value: str | int | None, name: str) -> int | None:
    """A thread count from a flag, an environment variable or a setting: None/""/0-as-auto are not allowed
    to hide a typo, so anything but a whole number >= 1 is a ValueError naming where it came from."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number of threads >= 1, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be at least 1, got {number}")
    return number


def explicit_request(requested: int | None, env: dict[str, str], flag: str = "--threads"
                     ) -> tuple[int, str] | None:
    """The thread count someone asked for, and where: the flag, then ARDIFF_THREADS, then OMP_NUM_THREADS;
    None when nobody did. A bad value is a ValueError (one line in the CLIs)."""
    if requested is not None:
        return parse_thread_count(requested, flag), flag
    number = parse_thread_count(env.get(ENV_THREADS), ENV_THREADS)
    if number is not None:
        return number, ENV_THREADS
    try:  # OpenMP's own variable (it may list nested levels, "4,2"): honoured when readable, never an error
        number = parse_thread_count(env.get("OMP_NUM_THREADS", "").split(",")[0], "OMP_NUM_THREADS")
    except ValueError:
        number = None
    return (number, "OMP_NUM_THREADS") if number is not None else None


# -- applying it, once per process ------------------------------------------------------------------------

_applied: ThreadChoice | None = None
_configured: tuple[int | None, int, str] = (None, 0, "--threads")  # requested, reserve, flag: for later calls
_lock = threading.Lock()  # the apps apply it on worker threads; two model loads must not both decide


def current_choice() -> ThreadChoice | None:
    """What `apply_thread_policy` chose in this process, None before it ran."""
    return _applied


def describe_current() -> str:
    """The applied choice in words, or the thread count torch has when the policy did not run here."""
    if _applied is not None:
        return _applied.describe()
    import torch

    n = torch.get_num_threads()
    return f"{n} thread{'s' if n != 1 else ''} (set by the caller)"


def configure_threads(requested: int | None = None, reserve: int = 0, flag: str = "--threads") -> None:
    """Say now what a later `apply_thread_policy()` (no arguments) in this process should use: for apps that
    load torch on a worker thread, so their window comes up first. Checks `requested` here (ValueError)."""
    global _configured
    parse_thread_count(requested, flag)
    _configured = (requested, reserve, flag)


def apply_thread_policy(requested: int | None = None, reserve: int | None = None, processes: int = 1,
                        flag: str | None = None) -> ThreadChoice:
    """Decide and set torch's intra-op threads for this process. The automatic choice is made once; later
    calls return it, except that an explicit `requested` count (e.g. `--threads`) always takes effect.

    Call it before `import torch` where possible: then the wait policy can still be set, and the load is
    measured over torch's own import. `requested` wins over everything; `reserve` keeps cores for a UI
    thread; `processes` ranks on this machine share the cores. Arguments left out come from
    `configure_threads`.
    """
    with _lock:
        return _apply(requested, reserve, processes, flag)


def _apply(requested: int | None, reserve: int | None, processes: int, flag: str | None) -> ThreadChoice:
    global _applied
    if requested is None and flag is None:
        requested, flag = _configured[0], _configured[2]
    flag = flag or "--threads"
    reserve = _configured[1] if reserve is None else reserve
    if _applied is not None:
        if requested is None:
            return _applied
        threads = parse_thread_count(requested, flag)  # a second command in the same process (tests, scripts)
        import torch

        torch.set_num_threads(threads)
        _applied = ThreadChoice(threads, flag, wait_policy=_applied.wait_policy)
        return _applied
    explicit = explicit_request(requested, os.environ, flag)  # validate before any work
    torch_loaded = "torch" in sys.modules
    before = read_cpu_times()
    user_wait = os.environ.get("OMP_WAIT_POLICY")
    wait = user_wait.upper() if user_wait else "default"
    if explicit is None and not torch_loaded and before is not None:
        # the wait policy must be set before the import, so it gets a first, quick look at the load
        policy = choose_wait_policy(user_wait, runnable_elsewhere())
        if policy:
            os.environ["OMP_WAIT_POLICY"] = wait = policy
    import torch

    if explicit is not None:
        threads, source = explicit
        choice = ThreadChoice(threads, source, wait_policy=wait)
    else:
        cpus = allowed_cpus()
        cores = usable_cores(len(cpus), read_cpu_quota())
        busy = 0.0
        if before is not None:
            wait_s = MIN_SAMPLE_S - (time.monotonic() - before.at)
            if wait_s > 0:
                time.sleep(wait_s)
            after = read_cpu_times()
            busy = busy_elsewhere(before, after, cpus) if after is not None else 0.0
        threads = decide_threads(cores, busy, reserve, processes)
        choice = ThreadChoice(threads, "policy", cores, round(busy, 1), wait)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    _applied = choice
    return choice


def parse_running(loadavg_text: str) -> int:
    """The runnable tasks now, from /proc/loadavg ("0.50 0.40 0.30 3/456 789" -> 3); this one included."""
    return int(loadavg_text.split()[3].split("/")[0])


def runnable_elsewhere(path: Path = Path("/proc/loadavg"), looks: int = 5, interval_s: float = 0.004,
                       own_tasks: Path = Path("/proc/self/task")) -> float:
    """Tasks of other processes that are runnable right now: the median of a few looks at /proc/loadavg
    (about 20 ms in all; one look catches a moment, the median a state), less this process's own runnable
    threads (a library's helper thread counts there too). 0 where it cannot be read."""
    seen = []
    for i in range(looks):
        try:
            seen.append(max(0, parse_running(path.read_text()) - runnable_threads(own_tasks)))
        except (OSError, ValueError, IndexError):
            return 0.0
        if i + 1 < looks:
            time.sleep(interval_s)
    return float(sorted(seen)[len(seen) // 2])


def runnable_threads(tasks: Path = Path("/proc/self/task")) -> int:
    """This process's threads in state R (running or runnable), at least 1: the one asking."""
    running = 0
    try:
        for task in tasks.iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue  # the thread ended meanwhile
            running += stat[stat.rindex(")") + 2:].startswith("R")
    except OSError:
        pass
    return max(1, running)
