"""scripts/gpu-check: its dry run (CPU, tiny preset) writes a report with a result in every section, and a step
that fails, dies or hangs is recorded while the next one still runs."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check"


def _load():
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.timeout(400)
def test_dry_run_reports_every_step_with_a_result(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the script puts the repository on the path itself
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "-o", str(report)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=380)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    gc = _load()
    for name, title, _, _ in gc.STEPS:
        assert re.search(rf"^\| {re.escape(name)} \| ok \| [\d.]+ \| .+ \|$", text, re.M), (name, text[:3000])
        section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
        assert "**result: ok**" in section and len(section.strip().splitlines()) >= 3, (name, section)
    assert "DRY RUN" in text
    assert "3 skipped" in text  # the cuda-marked tests ran, and skipped without a GPU
    assert "backend **gloo**" in text  # torchrun really started a process group
    assert "torch APIs the engine uses: 17/17 present" in text and "engine modules: all import" in text


def test_a_failing_dying_or_hanging_step_is_recorded(tmp_path: Path) -> None:
    gc = _load()
    ctx = gc.Ctx(dry=True, device="cpu", tmp=tmp_path, env=dict(os.environ), timeout=20)

    def boom(_ctx):
        raise ValueError("no such kernel")

    result, _ = gc.run_step("boom", "Boom", boom, ctx)
    assert result.status == "failed" and "ValueError: no such kernel" in result.summary
    assert any("Traceback" in line or "boom" in line for line in result.details)

    def die(_ctx):
        os._exit(7)  # a segfault-like death: no result sent

    result, _ = gc.run_step("die", "Die", die, ctx)
    assert result.status == "failed" and "exit code 7" in result.summary

    ctx.timeout = 1.0
    start = time.perf_counter()
    result, _ = gc.run_step("hang", "Hang", lambda _ctx: time.sleep(60), ctx)
    assert result.status == "failed" and "timed out" in result.summary
    assert time.perf_counter() - start < 15

    ctx.timeout = 20
    result, _ = gc.run_step("fine", "Fine", lambda _ctx: {"summary": "42 frames/s", "details": ["- x"]}, ctx)
    assert (result.status, result.summary, result.details) == ("ok", "42 frames/s", ["- x"])
    gc.write_report(tmp_path / "r.md", [result], ["header"])
    assert "| fine | ok |" in (tmp_path / "r.md").read_text()


def test_missing_packages_get_stand_ins_that_fail_only_when_used(tmp_path: Path, monkeypatch) -> None:
    gc = _load()
    monkeypatch.setattr(gc, "STUBBABLE", ("ardiff_no_such_module",))
    assert gc._stand_ins(tmp_path) == ["ardiff_no_such_module"]
    monkeypatch.syspath_prepend(str(tmp_path))
    import ardiff_no_such_module as stub

    assert stub.__gpu_check_stand_in__
    thing = stub.Image.Resampling.BOX  # attribute chains resolve at import time...
    with pytest.raises(ImportError, match="not installed"):
        thing()  # ...and fail only when used


def test_peak_table_picks_the_right_gpu() -> None:
    gc = _load()
    assert gc._peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gc._peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gc._peak_tflops("NVIDIA A800-SXM4-80GB") == 312.0
    assert gc._peak_tflops("Some Future GPU") is None


def test_cuda_tests_run_without_pytest_installed(tmp_path: Path, monkeypatch) -> None:
    gc = _load()
    real = gc.importlib.util.find_spec
    monkeypatch.setattr(gc.importlib.util, "find_spec", lambda name, *a: None if name == "pytest" else real(name, *a))
    ctx = gc.Ctx(dry=True, device="cpu", tmp=tmp_path, env=dict(os.environ), timeout=120)
    result, _ = gc.run_step("tests", "Tests", gc.step_tests, ctx)  # forked: its pytest stand-in stays there
    assert result.status == "ok", (result.summary, result.details)
    assert "pytest not installed" in result.summary
    assert sum("skipped (no CUDA device)" in line for line in result.details) == 3


def test_bash_runs_it_with_a_python_that_has_torch(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--dry-run" in done.stdout, done.stderr
    env = {**os.environ, "PYTHON": "", "PATH": str(tmp_path)}  # no python anywhere
    done = subprocess.run(["/bin/sh", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "set PYTHON=" in done.stderr
