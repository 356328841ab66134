"""The hostile-input battery's fast cases (issue 21), as one table over the command lines.

Each case: a command line (`ardiff` or `ardiff-export`, run in-process), the exit code, words the one-line
error must hold, files that must and must not exist afterwards. Every case also checks what is never allowed:
a traceback or more than one line on failure, a file that existed before changed or gone (unless the case
names it as the output or a stale temp file to sweep), a temp file left behind, and sampling started for a
request that must be refused up front. Signals are tested by subprocess at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine import pipeline as pipeline_module
from engine.backends.export_cli import main as export_main
from engine.cli import main as ardiff_main
from engine.video_io import write_video

ROOT = Path(__file__).resolve().parents[1]
LONG = "L" * 240  # + ".mp4": a legal 244-byte name whose sheet name (250 bytes) fits too
TOO_LONG = "T" * 247  # + ".mp4" fits, but the sheet name "T..._sheet.png" is 257 bytes


@dataclass
class Case:
    id: str
    argv: list[str]
    code: int
    words: list[str] = field(default_factory=list)
    exists: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    samples: bool = False  # sampling may start (else the request must be refused before it)
    prog: str = "ardiff"
    temps: bool = False  # plant a stale temp file (dead pid) and a live one (running pid), both an hour old


SAMPLE = ["--frames", "2", "--steps", "2", "--quiet", "--checkpoint", "{ckpt}"]
CONTINUE = ["continue", "{clip}", "--context", "4"]

CASES = [
    # 2: -o equal to the input, however it is spelled
    Case("output-is-input", CONTINUE + ["-o", "{clip}"] + SAMPLE, 2, ["never overwrites its input"],
         absent=["c_sheet.png"]),
    Case("output-is-input-dotdot", CONTINUE + ["-o", "{dir}/sub/../c.mp4"] + SAMPLE, 2, ["never overwrites"]),
    Case("output-is-input-symlink", CONTINUE + ["-o", "{dir}/link.mp4"] + SAMPLE, 2, ["never overwrites"]),
    Case("output-is-checkpoint", ["generate", "-o", "{ckpt}"] + SAMPLE, 2, ["cannot write '.safetensors'"]),
    Case("output-folder-holds-input", ["continue", "{frames}", "--context", "2", "-o", "{frames}"] + SAMPLE, 2,
         ["never"]),
    Case("output-inside-input-folder", ["continue", "{frames}", "--context", "2", "-o", "{frames}/out.mp4"]
         + SAMPLE, 2, ["inside the input folder"], absent=["frames/out.mp4", "frames/out_sheet.png"]),
    Case("output-is-fifo", ["generate", "-o", "{dir}/pipe"] + SAMPLE, 2, ["FIFO"]),
    Case("output-is-symlink-loop", ["generate", "-o", "{dir}/loop"] + SAMPLE, 2, ["symlink loop"]),
    # 11: output checked before sampling
    Case("unknown-extension", ["generate", "-o", "{dir}/out.xyz"] + SAMPLE, 2, ["cannot write '.xyz'"],
         absent=["out.xyz", "out_sheet.png"]),
    Case("folder-with-other-files", ["generate", "-o", "{dir}/notes"] + SAMPLE, 2, ["holds other files"],
         exists=["notes/thesis.tex"], absent=["notes_sheet.png"]),
    Case("empty-folder-named-mp4", ["generate", "-o", "{dir}/empty.mp4"] + SAMPLE, 2, ["existing folder"],
         exists=["empty.mp4"], absent=["empty_sheet.png"]),
    Case("schedule-not-png", ["schedule", "-o", "{dir}/heat.xyz"], 2, [".png"], absent=["heat.xyz"]),
    # 7: the sheet cannot be written: the video must not appear either
    Case("sheet-is-a-folder", ["generate", "-o", "{dir}/blocked.mp4"] + SAMPLE, 2, ["contact sheet", "folder"],
         absent=["blocked.mp4"]),
    # 6: long names
    Case("244-byte-name", ["generate", "-o", f"{{dir}}/{LONG}.mp4"] + SAMPLE, 0,
         exists=[f"{LONG}.mp4", f"{LONG}_sheet.png"], samples=True),
    Case("sheet-name-too-long", ["generate", "-o", f"{{dir}}/{TOO_LONG}.mp4"] + SAMPLE, 2, ["255"],
         absent=[f"{TOO_LONG}.mp4"]),
    # 5: sizes refused up front, with the estimate
    Case("frames-1e8", ["generate", "-o", "{dir}/big.mp4", "--frames", "100000000", "--steps", "2", "--quiet",
                        "--checkpoint", "{ckpt}"], 2, ["memory", "iB", "100000000 new frames"]),
    Case("hidden-2-20", ["generate", "-o", "{dir}/x.mp4", "--frames", "2", "--quiet", "--checkpoint",
                         "{dir}/huge.safetensors"], 2, ["huge.safetensors", "memory", "parameters"]),
    Case("schedule-1e9-text", ["schedule", "--frames", "1000000000", "--text"], 2, ["memory", "level matrix"]),
    # 4: weights that load and give black frames
    Case("nan-weights", ["generate", "-o", "{dir}/x.mp4", "--checkpoint", "{dir}/nan.safetensors"], 2,
         ["nan.safetensors", "dit.", "non-finite"]),
    Case("inf-weights", ["generate", "-o", "{dir}/x.mp4", "--checkpoint", "{dir}/inf.safetensors"], 2,
         ["non-finite"]),
    Case("int32-weights", ["generate", "-o", "{dir}/x.mp4", "--checkpoint", "{dir}/int.safetensors"], 2,
         ["int32", "floating point"]),
    Case("bool-weights", ["generate", "-o", "{dir}/x.mp4", "--checkpoint", "{dir}/bool.safetensors"], 2,
         ["bool", "floating point"]),
    # 12: messages that say what is wrong
    Case("fifo-input", ["continue", "{dir}/pipe", "-o", "{dir}/x.mp4"] + SAMPLE, 2, ["FIFO"]),
    Case("dev-zero-input", ["continue", "/dev/zero", "-o", "{dir}/x.mp4"] + SAMPLE, 2, ["character device"]),
    Case("loop-input", ["continue", "{dir}/loop", "-o", "{dir}/x.mp4"] + SAMPLE, 2, ["symlink loop"]),
    Case("fifo-checkpoint", ["info", "{dir}/pipe"], 2, ["FIFO"]),
    Case("dev-zero-checkpoint", ["generate", "-o", "{dir}/x.mp4", "--checkpoint", "/dev/zero"], 2,
         ["character device"]),
    Case("loop-checkpoint", ["info", "{dir}/loop"], 2, ["symlink loop"]),
    Case("bad-format-version", ["info", "{dir}/version.safetensors"], 2, ["version.safetensors",
                                                                        "format_version"]),
    Case("huge-seed", ["generate", "-o", "{dir}/x.mp4", "--seed", str(2**70)] + SAMPLE, 2,
         ["--seed", "seed must be in 0..", str(2**64 - 1)]),
    # 8: stale temp files of a killed run are swept on the next write; a live run's are kept
    Case("stale-temp-swept", ["generate", "-o", "{dir}/fresh.mp4"] + SAMPLE, 0,
         exists=["fresh.mp4", "fresh_sheet.png", "{live_temp}"], absent=["{stale_temp}"], samples=True, temps=True),
    # 1, 9: the exporter never deletes a folder it did not make, and checks -o before work
    Case("export-into-checkpoint-folder", ["{dir}/d/m.safetensors", "-o", "{dir}/d", "--onnx"], 2,
         ["holding the input"], exists=["d/m.safetensors"], prog="ardiff-export"),
    Case("export-into-foreign-folder", ["{ckpt}", "-o", "{dir}/notes", "--onnx"], 2, ["other files"],
         exists=["notes/thesis.tex"], prog="ardiff-export"),
    Case("export-onto-input-file", ["{ckpt}", "-o", "{ckpt}", "--onnx"], 2, ["is the input"],
         prog="ardiff-export"),
]


def _rewrite(src: Path, dst: Path, tensor_fn=None, meta_fn=None) -> None:
    """A copy of checkpoint `src` with some tensors or metadata changed (the attacks of the battery)."""
    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    if tensor_fn:
        tensor_fn(tensors)
    if meta_fn:
        meta_fn(meta)
    save_file(tensors, str(dst), metadata=meta)


def _set(key, fn):
    def change(tensors):
        tensors[key] = fn(tensors[key])
    return change


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def battery(tmp_path_factory, tiny_checkpoint):
    """Bad checkpoints, made once (the NaN/inf/int/bool/huge/bad-version variants of the tiny checkpoint)."""
    folder = tmp_path_factory.mktemp("bad-checkpoints")
    with safe_open(str(tiny_checkpoint), framework="pt") as f:
        keys = list(f.keys())
    key = next(k for k in keys if k.startswith("dit.") and k.endswith("weight"))

    def nan(t):
        t = t.clone()
        t.view(-1)[3] = float("nan")
        return t

    def inf(t):
        t = t.clone()
        t.view(-1)[0] = float("inf")
        return t

    _rewrite(tiny_checkpoint, folder / "nan.safetensors", _set(key, nan))
    _rewrite(tiny_checkpoint, folder / "inf.safetensors", _set(key, inf))
    _rewrite(tiny_checkpoint, folder / "int.safetensors", _set(key, lambda t: t.to(torch.int32)))
    _rewrite(tiny_checkpoint, folder / "bool.safetensors", _set(key, lambda t: t > 0))

    def huge(meta):
        cfg = json.loads(meta["config"])
        cfg["dit"]["hidden"] = 2**20
        meta["config"] = json.dumps(cfg)

    _rewrite(tiny_checkpoint, folder / "huge.safetensors", meta_fn=huge)
    _rewrite(tiny_checkpoint, folder / "version.safetensors", meta_fn=lambda m: m.update(format_version="x1"))
    return folder


def _snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under `folder` (FIFOs and links to nowhere skipped)."""
    out = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case, tmp_path, capsys, monkeypatch, tiny_checkpoint, battery):
    d = tmp_path
    rng = np.random.default_rng(0)
    write_video(d / "c.mp4", rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), fps=8)
    write_video(d / "frames", rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    (d / "sub").mkdir()
    (d / "link.mp4").symlink_to(d / "c.mp4")
    (d / "notes").mkdir()
    (d / "notes" / "thesis.tex").write_text("years of work")
    (d / "empty.mp4").mkdir()
    (d / "blocked_sheet.png").mkdir()
    os.mkfifo(d / "pipe")
    (d / "loop").symlink_to(d / "loop")
    (d / "d").mkdir()
    (d / "d" / "m.safetensors").write_bytes(Path(tiny_checkpoint).read_bytes())
    for name in ("nan", "inf", "int", "bool", "huge", "version"):
        (d / f"{name}.safetensors").symlink_to(battery / f"{name}.safetensors")
    stale = f".ardiff-{_dead_pid()}-0123abcd.fresh.tmp.mp4"
    live = f".ardiff-{os.getppid()}-4567cdef.fresh.tmp.mp4"
    for name in (stale, live) if case.temps else ():
        (d / name).write_bytes(b"half a video")
        os.utime(d / name, (time.time() - 3600, time.time() - 3600))
    names = {"dir": str(d), "clip": str(d / "c.mp4"), "frames": str(d / "frames"), "ckpt": str(tiny_checkpoint),
             "stale_temp": stale, "live_temp": live}
    before = _snapshot(d)
    ckpt_hash = hashlib.sha256(Path(tiny_checkpoint).read_bytes()).hexdigest()

    if not case.samples:  # a refused request must be refused before sampling starts
        def no_sampling(*a, **k):
            raise AssertionError("sampling started for a request that must be refused up front")
        monkeypatch.setattr(pipeline_module.Pipeline, "_stream", no_sampling)

    argv = [a.format(**names) for a in case.argv]
    main = ardiff_main if case.prog == "ardiff" else export_main
    code = main(argv)
    _, err = capsys.readouterr()

    assert code == case.code, err
    if case.code:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{case.prog}: error: "), err
        for word in case.words:
            assert word in lines[0], (word, lines[0])
    for name in case.exists:
        assert (d / name.format(**names)).exists(), name
    absent = [n.format(**names) for n in case.absent]
    for name in absent:
        assert not (d / name).exists(), name
    # nothing the user had is lost or changed; the only new files are the named outputs; no temp files stay
    after = _snapshot(d)
    for name, digest in before.items():
        if name not in absent:
            assert after.get(name) == digest, f"{name} changed or vanished"
    allowed = set(before) | {n.format(**names) for n in case.exists}
    assert not [n for n in after if n not in allowed], sorted(after)
    assert not [p for p in os.listdir(d) if p.startswith(".ardiff-") and p != live], os.listdir(d)
    assert hashlib.sha256(Path(tiny_checkpoint).read_bytes()).hexdigest() == ckpt_hash


# -- the two-file commit, interrupts and signals ----------------------------------------------------------------

GENERATE = ["generate", "--frames", "2", "--steps", "2", "--quiet"]


def _new_files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_commit_rolls_back_the_first_output_when_the_second_fails(tmp_path, monkeypatch):
    """Item 7 at its root: a video and its sheet appear together or not at all, and an old video under the
    same name is restored when the new pair cannot be completed."""
    from engine import outputs as O

    video, sheet = tmp_path / "out.mp4", tmp_path / "out_sheet.png"
    video.write_bytes(b"the previous video")
    staged = [tmp_path / ".ardiff-1-00000000.a.tmp.mp4", tmp_path / ".ardiff-1-00000001.b.tmp.png"]
    for path in staged:
        path.write_bytes(b"new")
    def failing(real):
        def rename(src, dst):
            if Path(dst) == sheet:
                raise OSError(28, "No space left on device", str(dst))
            real(src, dst)
        return rename

    monkeypatch.setattr(O.os, "rename", failing(os.rename))
    monkeypatch.setattr(O.os, "replace", failing(os.replace))
    written: list[Path] = []
    with pytest.raises(OSError, match="No space"), O.OutputSet(written) as outputs:
        outputs.add(staged[0], video)
        outputs.add(staged[1], sheet)
        outputs.commit()
    assert video.read_bytes() == b"the previous video" and not sheet.exists() and written == []
    assert _new_files(tmp_path) == ["out.mp4"]  # staged files and the backup are gone


def test_interrupt_while_staging_the_sheet_writes_nothing(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    """Item 8: Ctrl-C during the sheet left `.out_sheet.tmp-*.png` and said "nothing was written" after
    out.mp4 was written. Now neither appears, no temp file stays, and the message is true."""
    from PIL import Image

    def interrupted(image, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half a PNG")  # Ctrl-C while PIL is writing the sheet
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    code = ardiff_main(GENERATE + ["-o", str(tmp_path / "out.mp4"), "--checkpoint", str(tiny_checkpoint)])
    err = capsys.readouterr().err
    assert code == 130 and err.strip() == "ardiff: interrupted; nothing was written"
    assert _new_files(tmp_path) == []


def test_interrupt_after_writing_says_what_was_written(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    import engine.cli as C

    real_say = C._say

    def say(args, text):
        if text.startswith("wrote"):
            raise KeyboardInterrupt
        real_say(args, text)

    monkeypatch.setattr(C, "_say", say)
    code = ardiff_main(GENERATE + ["-o", str(tmp_path / "out.mp4"), "--checkpoint", str(tiny_checkpoint)])
    err = capsys.readouterr().err.strip()
    assert code == 130 and "nothing was written" not in err
    assert err.startswith("ardiff: interrupted; wrote") and "out.mp4" in err and "out_sheet.png" in err
    assert (tmp_path / "out.mp4").is_file() and (tmp_path / "out_sheet.png").is_file()


@pytest.mark.parametrize("target", ["out.mp4", "frames"])
def test_sigterm_while_encoding_removes_the_temp_files(tmp_path, capsys, monkeypatch, tiny_checkpoint, target):
    """A real SIGTERM (to this process) while the video or the PNG folder is being written: the handler turns
    it into an exception, the writer removes its temp file or folder, exit 143 with a true message."""
    import engine.video_io as V

    real = {"out.mp4": V._encode_h264, "frames": V._write_folder}
    name = "_encode_h264" if target == "out.mp4" else "_write_folder"

    def killed(*args):
        real[target](*args)  # the temp file or folder is complete on disk
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here; never reached otherwise
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(V, name, killed)
    code = ardiff_main(GENERATE + ["-o", str(tmp_path / target), "--checkpoint", str(tiny_checkpoint)])
    assert code == 143 and capsys.readouterr().err.strip() == "ardiff: terminated; nothing was written"
    assert _new_files(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the CLI's only while it runs


def test_sigterm_by_subprocess_ends_cleanly(tmp_path, tiny_checkpoint):
    """SIGTERM to a real `ardiff generate` in the middle of sampling: one line, exit 143, nothing left."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "generate", "-o", str(tmp_path / "out.mp4"),
                             "--frames", "3000", "--steps", "50", "--checkpoint", str(tiny_checkpoint)],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    while not seen or " model " not in seen[-1]:  # the model description: loading is done, sampling starts
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen)  # EOF before the description: the run failed
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 143, rest
    assert rest.strip().splitlines()[-1] == "ardiff: terminated; nothing was written"
    assert _new_files(tmp_path) == []


# -- the exporter: folders it did not make, read-only mounts, OSError ------------------------------------------


def test_atomic_folder_replace_never_deletes_foreign_contents(tmp_path):
    """Item 1 at its root: atomic_path(directory=True) removed any folder at the target."""
    from engine.atomic import atomic_path
    from engine.errors import OutputError

    target = tmp_path / "d"
    target.mkdir()
    (target / "m.safetensors").write_bytes(b"weights")
    with pytest.raises(OutputError, match="holding other files"), atomic_path(target, directory=True) as tmp:
        (tmp / "x").write_bytes(b"new")
    assert (target / "m.safetensors").read_bytes() == b"weights" and _new_files(tmp_path) == ["d"]
    with atomic_path(target, directory=True, may_replace=lambda p: True) as tmp:  # a previous output of ours
        (tmp / "x").write_bytes(b"new")
    assert _new_files(target) == ["x"] and _new_files(tmp_path) == ["d"]


def test_export_to_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    """Item 9 (exporter): `-o` on a read-only mount gave a traceback; now it is refused before any work, and an
    OSError raised later (the mount turning read-only mid-export, a full disk) is one line too."""
    import engine.backends.export as E
    import engine.outputs as O

    monkeypatch.setattr(O.os, "access", lambda path, mode: False)
    monkeypatch.setattr(O, "_read_only", lambda folder: True)
    code = export_main([str(tiny_checkpoint), "-o", str(tmp_path / "ro" / "out"), "--onnx"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "read-only file system" in err and "ardiff-export: error:" in err
    monkeypatch.undo()

    def full(*a, **k):
        raise OSError(30, "Read-only file system", str(tmp_path / "out"))

    monkeypatch.setattr(E, "export", full)
    code = export_main([str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--onnx"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "read-only file system" in err and "out" in err
    assert _new_files(tmp_path) == []


# -- temp names ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a" * 251 + ".mp4", "é" * 125 + ".png", "x" * 255, "clip.mp4"])
def test_temp_names_fit_in_255_bytes_and_keep_the_suffix(tmp_path, name):
    """Item 6: a legal long output name made a temp name over the 255-byte limit (a traceback)."""
    from engine.atomic import is_temp_name, temp_name

    tmp = temp_name(tmp_path / name)
    assert len(tmp.name.encode()) <= 255 and is_temp_name(tmp.name) and tmp.parent == tmp_path
    assert tmp.name.endswith(Path(name).suffix)
    tmp.write_bytes(b"x")  # the file system accepts it


def test_sweep_removes_only_dead_runs_older_than_this_process(tmp_path):
    from engine.atomic import sweep_stale

    dead, old = _dead_pid(), time.time() - 3600
    names = {"stale": f".ardiff-{dead}-0123abcd.x.tmp.mp4", "live": f".ardiff-{os.getppid()}-0123abcd.x.tmp.mp4",
             "new": f".ardiff-{dead}-89abcdef.x.tmp.mp4", "user": ".ardiff-notes.tmp", "dir": f".ardiff-{dead}-"
             f"00000000.frames.tmp"}
    for key, name in names.items():
        (tmp_path / name).mkdir() if key == "dir" else (tmp_path / name).write_bytes(b"x")
        if key != "new":  # "new": written after this process started (a run that may still be renaming)
            os.utime(tmp_path / name, (old, old))
    removed = sorted(p.name for p in sweep_stale(tmp_path))
    assert removed == sorted([names["stale"], names["dir"]])
    assert sorted(os.listdir(tmp_path)) == sorted([names["live"], names["new"], names["user"]])


# -- size estimates -------------------------------------------------------------------------------------------------


def test_sampling_estimates_refuse_beyond_half_the_memory_or_a_day(monkeypatch):
    """Item 5: `--frames 1000000` on the default model grew to 8.5 GB before anything said it was too much.
    The estimate is a lower bound: the noise drawn up front plus the uint8 video held twice."""
    from engine import limits
    from engine.errors import TooLargeError

    est = limits.estimate_sampling(8, 1_000_000, 50, 64, 16, 64, 3_867_424)
    assert est.memory == 1_000_000 * 16 * 64 * 4 + 2 * 1_000_008 * 64 * 64 * 3  # exact by construction
    monkeypatch.setattr(limits, "machine_memory", lambda: 16 * 2**30)
    with pytest.raises(TooLargeError, match=r"1000000 new frames at 64x64 needs at least 26\.7 GiB .* 16\.0 GiB"):
        limits.check_sampling(8, 1_000_000, 50, 64, 16, 64, 3_867_424)
    limits.check_sampling(8, 1000, 50, 64, 16, 64, 3_867_424)  # a normal run passes
    # a DiT of a billion parameters for 10 million frames: under the memory limit of a big machine, over a day
    monkeypatch.setattr(limits, "machine_memory", lambda: 2**50)
    with pytest.raises(TooLargeError, match="would take at least .* days"):
        limits.check_sampling(0, 10_000_000, 50, 16, 16, 64, 10**9)


def test_memory_error_is_one_line(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    """An allocation that fails anyway (another process took the memory) is one line and exit 2."""
    def out_of_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr(pipeline_module.Pipeline, "_stream", out_of_memory)
    code = ardiff_main(GENERATE + ["-o", str(tmp_path / "out.mp4"), "--checkpoint", str(tiny_checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("ardiff: error: out of memory")
    assert _new_files(tmp_path) == []
