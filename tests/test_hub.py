"""Checkpoints by reference (engine.hub): URLs from a local HTTP server this test starts, `hf:` from a local fake
of the Hub's resolve endpoint (HF_ENDPOINT) and from a pre-filled cache with HF_HUB_OFFLINE=1. Never the internet."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.checkpoint import load_checkpoint
from engine.cli import main
from engine.errors import CheckpointDownloadError, CheckpointError
from engine.hub import checkpoint_arg, parse_hf_ref, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Served:
    """What the test server holds: files by URL path, and how to misbehave."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_first: set[str] = field(default_factory=set)  # paths whose first GET stops halfway
    hang: set[str] = field(default_factory=set)  # paths that never answer (until the test ends)
    slow: set[str] = field(default_factory=set)  # paths whose body comes after half a second
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    release: threading.Event = field(default_factory=threading.Event)


def _handler(served: Served):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest's output clean
            pass

        def _head(self, body: bytes, status: int = 200, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
            self.send_header("X-Repo-Commit", COMMIT)  # what huggingface_hub reads to name the snapshot
            self.send_header("Accept-Ranges", "bytes")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()

        def _serve(self, send_body: bool) -> None:
            path = self.path.split("?")[0]
            served.requests.append((self.command, path, self.headers.get("Range")))
            if path in served.hang:
                served.release.wait(10)
                return
            body = served.files.get(path)
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            rng = self.headers.get("Range")
            if rng and send_body:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                self._head(body[start:], 206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
            else:
                self._head(body)
            if not send_body:
                return
            if path in served.slow:
                served.release.wait(0.5)
            if path in served.cut_first:
                served.cut_first.discard(path)
                self.wfile.write(body[start:len(body) // 2])  # Content-Length promised more: a short read
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

        def do_GET(self) -> None:
            self._serve(True)

        def do_HEAD(self) -> None:
            self._serve(False)

    return Handler


@pytest.fixture()
def server():
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    served.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """The user cache dir (platformdirs reads XDG_CACHE_HOME on Linux) and a short network timeout."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ARDIFF_DOWNLOAD_TIMEOUT", "1")
    return tmp_path / "cache"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_failure(code: int, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], (code, err)
    assert "Traceback" not in err


# --------------------------------------------------------------------------- parsing


def test_parse_hf_refs() -> None:
    ref = parse_hf_ref("hf:someone/model/sub/dir/w.safetensors@v1.0")
    assert (ref.repo_id, ref.filename, ref.revision) == ("someone/model", "sub/dir/w.safetensors", "v1.0")
    ref = parse_hf_ref("hf:someone/model")
    assert (ref.repo_id, ref.filename, ref.revision) == ("someone/model", "model.safetensors", None)
    assert parse_hf_ref("hf:a/b@refs/pr/3").revision == "refs/pr/3"
    for bad in ("hf:model", "hf:/b", "hf:a/b@", "hf:a/../b"):
        with pytest.raises(CheckpointDownloadError, match="hf:"):
            parse_hf_ref(bad)


def test_a_local_path_is_left_alone_and_a_url_stays_text(tmp_path) -> None:
    assert resolve_checkpoint(tmp_path / "x.safetensors") == tmp_path / "x.safetensors"
    assert checkpoint_arg(" https://h/x.safetensors ") == "https://h/x.safetensors"  # Path() would eat a slash
    assert checkpoint_arg("~/m.safetensors") == Path.home() / "m.safetensors"


@pytest.mark.parametrize("ref, needle", [
    ("http://example.com/m.safetensors", "only allowed to this machine"),
    ("https://example.com/m.safetensors#md5=00", "#sha256="),
    ("https://example.com/m.safetensors#sha256=abc", "64 hex"),
])
def test_bad_urls_are_refused_before_any_network(ref, needle, cache) -> None:
    with pytest.raises(CheckpointDownloadError, match=needle):
        resolve_checkpoint(ref)
    assert not cache.exists()  # nothing was fetched or created


# --------------------------------------------------------------------------- URLs


def test_url_download_is_cached_and_loads_as_a_checkpoint(server, cache, tiny_checkpoint, capsys) -> None:
    served, base = server
    body = tiny_checkpoint.read_bytes()
    served.files["/models/tiny.safetensors"] = body
    url = f"{base}/models/tiny.safetensors#sha256={hashlib.sha256(body).hexdigest()}"
    code, out, err = run_cli(capsys, "info", url, "--json")
    assert code == 0, err
    assert '"name": "tiny"' in out
    path = resolve_checkpoint(url)
    assert path.read_bytes() == body and path.is_relative_to(cache / "ardiff" / "checkpoints")
    assert load_checkpoint(url).config.name == "tiny"
    assert [r for r in served.requests if r[0] == "GET"] == [("GET", "/models/tiny.safetensors", None)]  # once
    assert not list(path.parent.glob("*.part"))


def test_truncated_download_fails_in_one_line_then_resumes(server, cache, tiny_checkpoint, capsys) -> None:
    served, base = server
    body = tiny_checkpoint.read_bytes()
    served.files["/t.safetensors"] = body
    served.cut_first.add("/t.safetensors")
    url = f"{base}/t.safetensors"
    code, _, err = run_cli(capsys, "info", url)
    one_line_failure(code, err, "run again to resume")
    part = next((cache / "ardiff" / "checkpoints").rglob("*.part"))
    assert part.stat().st_size == len(body) // 2
    assert resolve_checkpoint(url).read_bytes() == body
    assert served.requests[-1] == ("GET", "/t.safetensors", f"bytes={len(body) // 2}-")  # only the rest was sent


def test_wrong_sha256_keeps_nothing(server, cache, tiny_checkpoint, capsys) -> None:
    served, base = server
    served.files["/m.safetensors"] = tiny_checkpoint.read_bytes()
    code, _, err = run_cli(capsys, "info", f"{base}/m.safetensors#sha256={'0' * 64}")
    one_line_failure(code, err, "sha256 mismatch")
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock"]


def test_404_and_html_page_and_hang_are_one_line_errors(server, cache, capsys) -> None:
    served, base = server
    code, _, err = run_cli(capsys, "info", f"{base}/missing.safetensors")
    one_line_failure(code, err, "HTTP 404")
    served.files["/page.safetensors"] = b"<html>sign in first</html>"
    code, _, err = run_cli(capsys, "info", f"{base}/page.safetensors")
    one_line_failure(code, err, "not a safetensors checkpoint")
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock"]  # an error page is never cached
    served.hang.add("/slow.safetensors")
    code, _, err = run_cli(capsys, "info", f"{base}/slow.safetensors")
    one_line_failure(code, err, "timed out")


def test_offline_mode_uses_the_cache_and_never_the_network(server, cache, tiny_checkpoint, capsys,
                                                            monkeypatch) -> None:
    served, base = server
    served.files["/o.safetensors"] = tiny_checkpoint.read_bytes()
    resolve_checkpoint(f"{base}/o.safetensors")  # cached while online
    asked = len(served.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli(capsys, "info", f"{base}/o.safetensors")
    assert code == 0 and "16x16, window 16" in out, err
    served.files["/new.safetensors"] = tiny_checkpoint.read_bytes()
    code, _, err = run_cli(capsys, "info", f"{base}/new.safetensors")
    one_line_failure(code, err, "offline mode is on")
    assert len(served.requests) == asked  # offline: the server was never asked


def test_concurrent_fetches_download_once(server, cache, tiny_checkpoint) -> None:
    # torchrun starts every rank at once, each resolving the same vae=/init_dit= URL.
    served, base = server
    served.files["/c.safetensors"] = tiny_checkpoint.read_bytes()
    served.slow.add("/c.safetensors")
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(resolve_checkpoint(f"{base}/c.safetensors")))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(paths) == 3 and len(set(paths)) == 1 and paths[0].read_bytes() == tiny_checkpoint.read_bytes()
    assert [r[0] for r in served.requests].count("GET") == 1


def test_a_fetched_pickle_is_refused_and_never_unpickled(server, cache, capsys) -> None:
    import pickle

    served, base = server
    served.files["/evil.safetensors"] = pickle.dumps({"x": 1})
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_checkpoint(f"{base}/evil.safetensors")


# --------------------------------------------------------------------------- the Hub


def _ardiff(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process: huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when imported."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full.update(env, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "engine.cli", *argv], env=full, capture_output=True, text=True,
                          timeout=120)


def test_hf_reference_through_hf_endpoint_then_offline_from_the_cache(server, tmp_path, tiny_checkpoint) -> None:
    served, base = server
    served.files["/someone/ardiff-tiny/resolve/main/weights/tiny.safetensors"] = tiny_checkpoint.read_bytes()
    hf_home = str(tmp_path / "hf")
    ref = "hf:someone/ardiff-tiny/weights/tiny.safetensors"
    done = _ardiff({"HF_HOME": hf_home, "HF_ENDPOINT": base}, "info", ref)
    assert done.returncode == 0, done.stderr
    assert "tiny" in done.stdout
    blob = next((tmp_path / "hf" / "hub" / "models--someone--ardiff-tiny" / "blobs").iterdir())
    assert blob.read_bytes() == tiny_checkpoint.read_bytes()  # in huggingface_hub's own cache layout
    gets = len([r for r in served.requests if r[0] == "GET"])
    # Offline: the cached file is used and the server is not asked.
    done = _ardiff({"HF_HOME": hf_home, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": base}, "info", ref)
    assert done.returncode == 0, done.stderr
    assert len([r for r in served.requests if r[0] == "GET"]) == gets
    # Offline and not cached: one line, exit 2.
    done = _ardiff({"HF_HOME": hf_home, "HF_HUB_OFFLINE": "1"}, "info", "hf:someone/other")
    one_line_failure(done.returncode, done.stderr, "not in the local Hub cache")
    # Online, a file the repository does not have.
    done = _ardiff({"HF_HOME": hf_home, "HF_ENDPOINT": base}, "info", "hf:someone/ardiff-tiny/nope.safetensors")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "hf:someone/ardiff-tiny/nope.safetensors" in done.stderr


# --------------------------------------------------------------------------- ardiff-train


def _packaged(path: Path, init_dit: str) -> Path:
    """A tiny packaged checkpoint whose recipe says its DiT started from `init_dit`."""
    from engine.checkpoint import save_checkpoint
    from engine.models import build_models, get_preset

    cfg = get_preset("tiny")
    vae, dit = build_models(cfg)
    recipe = [{"stage": "diffusion", "steps": 3, "preset": "tiny", "data": "synthetic:bouncing",
               "init_dit": init_dit}]
    return save_checkpoint(path, vae, dit, cfg, meta={"recipe": recipe, "steps": {"diffusion": 3}})


def test_trainer_takes_references_and_package_writes_a_hub_model_card(server, cache, tmp_path) -> None:
    from huggingface_hub import ModelCard

    from trainer import cli

    served, base = server
    served.files["/p.safetensors"] = _packaged(tmp_path / "p.safetensors", "hf:someone/base-model").read_bytes()
    out = tmp_path / "release" / "model.safetensors"
    assert cli.main(["package", "--diffusion", f"{base}/p.safetensors", "--vae", f"{base}/p.safetensors",
                     "-o", str(out), "--dataset", "someone/clips"]) == 0
    packaged = load_checkpoint(out)
    assert packaged.config.name == "tiny"
    # Provenance names the references, not this machine's cache.
    assert packaged.meta["sources"]["diffusion"] == packaged.meta["sources"]["vae"] == f"{base}/p.safetensors"
    data = ModelCard((out.parent / "README.md").read_text()).data  # parsed as the Hub parses it
    assert data.license == "apache-2.0" and data.library_name == "ardiff" and "video-continuation" in data.tags
    assert data.datasets == ["someone/clips"] and data.base_model == ["someone/base-model"]
    assert data.metrics == ["fvd", "psnr", "ssim"]
    # A README.md of the user's is never overwritten: the card goes beside it under the checkpoint's name.
    (out.parent / "README.md").write_text("my notes\n")
    again = out.parent / "model2.safetensors"
    assert cli.main(["package", "--diffusion", str(out), "--vae", str(out), "-o", str(again)]) == 0
    assert (out.parent / "README.md").read_text() == "my notes\n"
    assert "library_name: ardiff" in (out.parent / "model2.README.md").read_text()


# --------------------------------------------------------------------------- the apps


def test_tui_settings_keep_a_reference_as_typed(tmp_path) -> None:
    pytest.importorskip("textual")
    from app_tui.settings import parse_settings

    def checkpoint(text: str):
        form = {"s": "5", "frames": "8", "steps": "10", "context": "4", "seed": "0", "checkpoint": text}
        return parse_settings(form).checkpoint

    assert checkpoint(" https://h.example/m.safetensors ") == "https://h.example/m.safetensors"
    assert checkpoint("hf:o/r@v2") == "hf:o/r@v2"
    assert checkpoint("~/m.safetensors") == Path.home() / "m.safetensors"


def test_gui_loads_a_checkpoint_by_url(server, cache, tiny_checkpoint, qtbot, monkeypatch) -> None:
    pytest.importorskip("PySide6")
    from PySide6.QtWidgets import QInputDialog

    from app_gui.settings import Settings
    from app_gui.window import MainWindow

    served, base = server
    served.files["/gui.safetensors"] = tiny_checkpoint.read_bytes()
    url = f"{base}/gui.safetensors"
    w = MainWindow(Settings.load(), checkpoint=None, device="cpu", persist=False)
    qtbot.addWidget(w)
    qtbot.waitUntil(lambda: not w.loading_model, timeout=60_000)
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: (f" {url} ", True))
    w.act_open_ref.trigger()
    qtbot.waitUntil(lambda: not w.loading_model, timeout=60_000)
    assert w.model_error is None and w.pipeline is not None and w.pipeline.config.name == "tiny"
    assert w.settings.checkpoint == url  # kept as typed, not made into a local path
