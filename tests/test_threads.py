"""The thread policy (engine/threads.py): its decisions from faked affinity, quota and load, the overrides,
what it does to a process (run in a subprocess, since it applies once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import threads as T


def _times(busy: dict[int, int], total: dict[int, int], own: float, at: float) -> T.CpuTimes:
    return T.CpuTimes(busy, total, own, at)


# -- reading the machine ---------------------------------------------------------------------------------


def test_cgroup_quota_parsers():
    assert T.parse_cpu_max("max 100000\n") is None
    assert T.parse_cpu_max("150000 100000\n") == 1.5
    assert T.parse_cfs_quota("-1\n", "100000\n") is None
    assert T.parse_cfs_quota("200000\n", "100000\n") == 2.0


def test_quota_is_read_from_the_process_cgroup_v2_then_v1(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user.slice/app.scope\n")
    root = tmp_path / "fs"
    (root / "user.slice/app.scope").mkdir(parents=True)
    (root / "user.slice/app.scope/cpu.max").write_text("50000 100000\n")
    (root / "cpu.max").write_text("max 100000\n")
    assert T.read_cpu_quota(root, proc) == 0.5  # the process's own cgroup, not the root's
    v1 = tmp_path / "v1"
    (v1 / "cpu/docker/abc").mkdir(parents=True)
    (v1 / "cpu/docker/abc/cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu/docker/abc/cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:memory:/x\n2:cpu,cpuacct:/docker/abc\n0::/\n")
    assert T.read_cpu_quota(v1, proc) == 3.0
    assert T.read_cpu_quota(tmp_path / "nothing", tmp_path / "missing") is None  # no cgroup: no quota


def test_proc_stat_counts_steal_as_busy_and_iowait_as_idle():
    text = ("cpu  10 0 10 100 5 0 0 3 0 0\n"
            "cpu0 4 1 2 50 5 1 1 3 7 0\n"  # guest (7) is already inside user: not added
            "cpu1 6 0 8 50 0 0 0 0 0 0\nintr 1 2 3\n")
    busy, total = T.parse_proc_stat(text)
    assert total == {0: 67, 1: 64}
    assert busy == {0: 12, 1: 14}


def test_busy_elsewhere_subtracts_this_process_and_counts_only_our_cpus():
    before = _times({0: 0, 1: 0, 2: 0}, {0: 0, 1: 0, 2: 0}, own=0.0, at=0.0)
    # one second: cpu0 fully busy (half of it ours), cpu1 idle, cpu2 fully busy but not ours to use
    after = _times({0: 100, 1: 0, 2: 100}, {0: 100, 1: 100, 2: 100}, own=0.5, at=1.0)
    assert T.busy_elsewhere(before, after, {0, 1}) == pytest.approx(0.5)
    assert T.busy_elsewhere(before, after, {0, 1, 2}) == pytest.approx(1.5)
    idle = _times({0: 0, 1: 0}, {0: 100, 1: 100}, own=0.0, at=1.0)
    assert T.busy_elsewhere(before, idle, {0, 1}) == 0.0
    assert T.busy_elsewhere(before, before, {0, 1}) == 0.0  # no ticks passed: no information, not a crash


def test_runnable_elsewhere_is_the_median_of_looks(tmp_path):
    assert T.parse_running("0.50 0.40 0.30 3/456 789\n") == 3
    path = tmp_path / "loadavg"
    path.write_text("1.0 1.0 1.0 4/100 5\n")
    assert T.runnable_elsewhere(path, looks=3, interval_s=0, own_tasks=tmp_path / "none") == 3.0  # minus this one
    assert T.runnable_elsewhere(tmp_path / "missing", looks=3, interval_s=0) == 0.0
    # this process's own runnable threads (here two: a library's helper beside the asking one) are not others'
    tasks = tmp_path / "task"
    for tid, state in (("10", "R"), ("11", "R"), ("12", "S")):
        (tasks / tid).mkdir(parents=True)
        (tasks / tid / "stat").write_text(f"{tid} (python (x) y) {state} 1 2 3\n")
    assert T.runnable_threads(tasks) == 2
    assert T.runnable_elsewhere(path, looks=3, interval_s=0, own_tasks=tasks) == 2.0


# -- the decision ----------------------------------------------------------------------------------------


def test_usable_cores_is_affinity_capped_by_quota():
    assert T.usable_cores(8, None) == 8
    assert T.usable_cores(8, 2.0) == 2
    assert T.usable_cores(8, 2.5) == 2  # a third thread would only be throttled
    assert T.usable_cores(2, 16.0) == 2  # the quota does not add cores
    assert T.usable_cores(4, 0.5) == 1  # never zero


@pytest.mark.parametrize("cores,busy,reserve,processes,expected", [
    (2, 0.0, 0, 1, 2),   # idle: every core
    (2, 0.2, 0, 1, 2),   # background noise is not a core
    (2, 0.5, 0, 1, 1),   # a half-busy core is taken: one thread too many costs more than one too few
    (2, 1.0, 0, 1, 1),   # one busy process on two cores
    (2, 2.0, 0, 1, 1),   # all busy: still one thread
    (16, 4.0, 0, 1, 12),
    (2, 0.0, 1, 1, 1),   # a UI core kept
    (1, 0.0, 1, 1, 1),   # ... but never the last one
    (16, 0.0, 1, 1, 15),
    (16, 0.0, 0, 4, 4),  # four ranks share the cores
    (2, 0.0, 0, 4, 1),   # more ranks than cores: one each
])
def test_decide_threads(cores, busy, reserve, processes, expected):
    assert T.decide_threads(cores, busy, reserve, processes) == expected


def test_wait_policy_passive_only_on_a_busy_machine_and_never_over_the_user():
    assert T.choose_wait_policy(None, 0.0) is None
    assert T.choose_wait_policy(None, 2.0) == "PASSIVE"
    assert T.choose_wait_policy("ACTIVE", 2.0) is None


def test_explicit_request_order_and_validation():
    env = {"ARDIFF_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert T.explicit_request(2, env) == (2, "--threads")  # the flag wins
    assert T.explicit_request(None, env) == (3, "ARDIFF_THREADS")
    assert T.explicit_request(None, {"OMP_NUM_THREADS": "5"}) == (5, "OMP_NUM_THREADS")
    assert T.explicit_request(None, {"OMP_NUM_THREADS": "4,2"}) == (4, "OMP_NUM_THREADS")  # nested levels
    assert T.explicit_request(None, {"OMP_NUM_THREADS": "0"}) is None  # OpenMP's variable: never our error
    assert T.explicit_request(None, {"ARDIFF_THREADS": " "}) is None
    assert T.explicit_request(None, {}) is None
    for bad in (0, -1):
        with pytest.raises(ValueError, match="--threads must be at least 1"):
            T.explicit_request(bad, {})
    with pytest.raises(ValueError, match="ARDIFF_THREADS must be a whole number"):
        T.explicit_request(None, {"ARDIFF_THREADS": "many"})


def test_describe():
    assert T.ThreadChoice(1, "policy", 2, 1.0, "PASSIVE").describe() == \
        "1 thread (2 cores, 1.0 busy with other work, passive wait)"
    assert T.ThreadChoice(2, "policy", 2, 0.1).describe() == "2 threads (2 cores)"
    assert T.ThreadChoice(4, "--threads").describe() == "4 threads (--threads)"


# -- applied to a process ----------------------------------------------------------------------------------

_PROBE = ("import json, os, sys; from engine.threads import apply_thread_policy as a; "
          "c = a({req}); assert 'torch' in sys.modules; import torch; "
          "print(json.dumps([c.threads, c.source, torch.get_num_threads(), "
          "os.environ.get('OMP_WAIT_POLICY'), "
          "a().threads, a(3).threads, torch.get_num_threads()]))")


def _probe(requested: int | None, **env: str) -> list:
    ours = ("OMP_NUM_THREADS", "ARDIFF_THREADS", "OMP_WAIT_POLICY")
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    out = subprocess.run([sys.executable, "-c", _PROBE.format(req=requested)], capture_output=True, text=True,
                         env={**clean, **env}, cwd=Path(__file__).resolve().parents[1], check=True)
    return json.loads(out.stdout)


def test_apply_sets_torch_threads_once_and_the_request_wins():
    threads, source, torch_threads, wait, again, later, later_torch = _probe(1, ARDIFF_THREADS="2")
    assert (threads, source, torch_threads) == (1, "--threads", 1)
    assert again == 1  # decided once per process: a later call returns the first choice ...
    assert later == later_torch == 3  # ... unless it asks for a count itself (a second command in a script)
    assert wait is None  # an explicit choice leaves OpenMP's wait policy as the user had it
    threads, source, torch_threads, *_ = _probe(None, ARDIFF_THREADS="1", OMP_NUM_THREADS="2")
    assert (threads, source, torch_threads) == (1, "ARDIFF_THREADS", 1)
    threads, source, torch_threads, *_ = _probe(None)
    assert source == "policy" and torch_threads == threads
    assert 1 <= threads <= len(os.sched_getaffinity(0))


def test_configure_sets_what_a_later_bare_apply_uses_and_checks_at_once():
    code = ("import json; from engine import threads as t; "
            "t.configure_threads(2, reserve=1, flag='the setting'); c = t.apply_thread_policy(); "
            "import torch; print(json.dumps([c.threads, c.source, torch.get_num_threads()]))")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ARDIFF_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert json.loads(out.stdout) == [2, "the setting", 2]
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        T.configure_threads(0)


# -- the apps ------------------------------------------------------------------------------------------------


def test_apps_refuse_a_bad_thread_count_in_one_line(capsys):
    from app_gui.main import main as gui_main
    from app_tui.main import main as tui_main

    assert gui_main(["--threads", "0"]) == 2
    assert tui_main(["--threads", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ardiff-gui: error: --threads must be at least 1, got 0",
                   "ardiff-tui: error: --threads must be at least 1, got -1"]


def test_gui_threads_come_from_the_flag_then_the_env_then_the_setting(tmp_path, monkeypatch):
    import app_gui.settings
    from app_gui.main import configure_gui_threads, parse_args

    monkeypatch.setattr(T, "_configured", T._configured)  # restored after the test
    monkeypatch.setattr(app_gui.settings, "config_path", lambda: tmp_path / "gui.json")
    (tmp_path / "gui.json").write_text(json.dumps({"threads": 3}))
    monkeypatch.delenv("ARDIFF_THREADS", raising=False)
    configure_gui_threads(parse_args([]))
    assert T._configured == (3, 1, "the threads setting")  # one core kept for the window in every case
    configure_gui_threads(parse_args(["--threads", "2"]))
    assert T._configured == (2, 1, "--threads")
    monkeypatch.setenv("ARDIFF_THREADS", "1")
    configure_gui_threads(parse_args([]))
    assert T._configured[0] is None  # the environment beats the saved setting (apply reads it)
    monkeypatch.delenv("ARDIFF_THREADS")
    configure_gui_threads(parse_args(["--screenshot", "x.png"]))
    assert T._configured[0] is None  # screenshots start from default settings
    (tmp_path / "gui.json").write_text(json.dumps({"threads": -4}))
    assert app_gui.settings.Settings.load().threads == 0  # a damaged value means automatic


def test_trainer_refuses_a_bad_thread_count_in_one_line(tmp_path, capsys):
    from trainer.cli import main as train_main

    argv = ["vae-image", "--config", "tiny", "--run-dir", str(tmp_path / "run"), "--threads", "0"]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ardiff-train: error: --threads must be at least 1, got 0"]
    assert not (tmp_path / "run").exists()
