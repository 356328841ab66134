"""ardiff-tui: Textual pilot tests with the tiny random-weight checkpoint (fast, seeded, CPU only)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("textual")
pytest.importorskip("textual_image")

from rich.segment import Segment  # noqa: E402
from textual import events  # noqa: E402
from textual.widgets import Footer, Header, Input  # noqa: E402

import engine.device as device_mod  # noqa: E402
import engine.pipeline as pipeline_mod  # noqa: E402
from app_tui.app import ArdiffApp  # noqa: E402
from app_tui.render import ASCII_RAMP  # noqa: E402
from app_tui.prompts import UnsavedScreen  # noqa: E402
from app_tui.screens import HelpScreen, SaveScreen  # noqa: E402
from app_tui.settings import PRECISIONS, Settings, SettingsError, parse_settings  # noqa: E402
from app_tui.widgets.heatmap import SHADES, ScheduleHeatmap, cell_indices  # noqa: E402
from app_tui.worker import Failed, Job, PipelineCache, Started, run_job  # noqa: E402
from engine.pipeline import FrameReady  # noqa: E402
from engine.schedulers.ad import ADScheduler  # noqa: E402
from engine.video_io import read_video, write_video  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo.mp4"
FAST = dict(s=2, frames=6, steps=4, context=4, seed=0)  # 4 + (6 - 1) * 2 = 14 rows


@pytest.fixture(autouse=True)
def _own_config(tmp_path, monkeypatch):
    """Settings files go to a fresh folder: a test never reads or writes the person's own tui.json."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def make_app(checkpoint: Path | None, clip: Path | None = None, mode: str = "halfcell",
             **settings) -> ArdiffApp:
    values = {**FAST, **settings}
    return ArdiffApp(clip=clip, settings=Settings(checkpoint=checkpoint, device="cpu", **values),
                     image_mode=mode, start_dir=DEMO.parent)


async def type_into(pilot, selector: str, text: str) -> None:
    """Click a field, clear it and type, as a user would."""
    await pilot.click(selector)
    await pilot.press("home", "ctrl+k", *text)


async def paste_into(pilot, selector: str, text: str) -> None:
    """Click a field, clear it and paste (how a long path gets into a terminal; one event, not 60 keys)."""
    await pilot.click(selector)
    await pilot.press("home", "ctrl+k")
    pilot.app.focused.post_message(events.Paste(text))
    await pilot.pause()


async def open_clip(pilot, path: Path) -> None:
    await paste_into(pilot, "#path", str(path))
    await pilot.press("enter")
    await pilot.pause()
    await pilot.app.load_worker.wait()
    await pilot.pause()


async def model_ready(pilot) -> None:
    """Wait for the model the app loads behind its first paint (Generate is off until then)."""
    app = pilot.app
    for _ in range(100):
        if getattr(app, "model_worker", None) is not None or not getattr(app, "preload_model", False):
            break
        await pilot.pause(0.02)
    if getattr(app, "model_worker", None) is not None:
        await app.model_worker.wait()
    await pilot.pause()


async def generate(pilot, key: str = "f5") -> None:
    await model_ready(pilot)
    await pilot.press(key)
    await finish(pilot)


async def finish(pilot) -> None:
    """Wait for the run's worker, then for the UI to apply its last events (Done or Failed)."""
    app = pilot.app
    if app.job_worker is not None:
        await app.job_worker.wait()
    for _ in range(100):
        if not app.running:
            break
        await pilot.pause(0.05)
    await pilot.pause()


async def save_as(pilot, path: str) -> None:
    """ctrl+s, type the path in the dialog, enter; wait for the file."""
    await pilot.press("ctrl+s")
    await pilot.pause()
    assert isinstance(pilot.app.screen, SaveScreen)
    await paste_into(pilot, "#save-path", path)
    await pilot.press("enter")
    await pilot.pause()
    await pilot.app.save_worker.wait()
    await pilot.pause()


def plain_lines(widget) -> list[list[Segment]]:
    """The segments a widget draws, line by line (what reaches the terminal)."""
    return [list(widget.render_line(y)) for y in range(widget.size.height)]


# ---------------------------------------------------------------------------------------------- the flow


async def test_pick_clip_generate_save_and_read_back(tiny_checkpoint, tmp_path):
    app = make_app(tiny_checkpoint)
    async with app.run_test(size=(120, 36)) as pilot:
        await open_clip(pilot, DEMO)
        assert app.clip is not None and app.clip.num_frames == 32
        await type_into(pilot, "#set-s", "3")
        await type_into(pilot, "#set-frames", "5")
        await model_ready(pilot)
        await pilot.press("escape", "g")  # esc leaves the field, so g is a key, not a letter
        await finish(pilot)

        done = app.last_done
        assert app.errors == [] and done is not None and not done.cancelled
        assert done.num_context == 4 and len(done.video) == 4 + 5
        assert len(app.frames) == 9 and app.frames[-1].shape == (16, 16, 3)
        assert np.array_equal(app.frames[-1], done.video[-1])
        strip = app.query_one("#filmstrip")
        assert len(strip.frames) == 9 and strip.num_context == 4
        heatmap = app.query_one(ScheduleHeatmap)
        expected = ADScheduler(4, 3, 16, 1).level_matrix(5, 4)
        assert np.array_equal(heatmap.levels, expected) and heatmap.row == len(expected) - 1
        assert app.query_one("#progress").percentage == 1.0

        out = tmp_path / "out" / "continued.mp4"
        await save_as(pilot, str(out))
        assert app.saved == [out.resolve()] and not app.unsaved
        assert len(read_video(out)) == 9

        await pilot.press("f10")
        await pilot.pause()
    assert app.return_value == [out.resolve()]  # main() prints these on exit


async def test_cancel_midway_keeps_frames_so_far(tiny_checkpoint, tmp_path):
    app = make_app(tiny_checkpoint, DEMO, frames=12)
    emit = app._emit

    made = []

    def esc_at_third(job, event):  # the user presses Esc the moment the third new frame is made
        emit(job, event)
        if isinstance(event, FrameReady):
            made.append(event.index)
            if len(made) % 3 == 0:
                app.call_from_thread(app.action_cancel)  # the worker waits until the UI has run it

    app._emit = esc_at_third
    async with app.run_test(size=(120, 36)) as pilot:
        await app.load_worker.wait()
        await generate(pilot)
        done = app.last_done
        assert done is not None and done.cancelled
        assert len(done.video) == 4 + 3 and len(app.frames) == 7  # stopped within the row
        assert not app.running and app.unsaved
        assert any(m.startswith("cancelled: 7 frames (4 context + 3 new)") and "take 1" in m
                   for m in app.messages)
        (take,) = app.takes
        assert take.cancelled and take.num_new == 3 and app.takes.current is take  # the partial run is a take

        folder = tmp_path / "frames"
        await save_as(pilot, str(folder) + "/")
        assert len(read_video(folder)) == 7
        await save_as(pilot, str(tmp_path / "partial.gif"))
        assert len(read_video(tmp_path / "partial.gif")) == 7

        await generate(pilot, "g")  # a fresh run after a cancel works: a second take, the first kept
        assert app.last_done.cancelled  # (the hook cancels again at the third frame)
        assert len(app.frames) == 7 and app.unsaved and len(app.takes) == 2
        assert [t.unsaved for t in app.takes] == [False, True]

        await app.action_quit()  # an unsaved take: quit asks first
        await pilot.pause()
        assert isinstance(app.screen, UnsavedScreen) and app.return_value is None
        await pilot.press("d")  # discard
    assert app.return_value == [folder.resolve(), (tmp_path / "partial.gif").resolve()]


async def test_80x24_layout_nothing_overlaps(tiny_checkpoint):
    app = make_app(tiny_checkpoint, DEMO)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.load_worker.wait()
        await generate(pilot)
        assert app.errors == []
        screen = app.screen.region
        names = ["#clip-panel", "#form", "#buttons", "#context-preview", "#newest-preview", "#filmstrip",
                 "#heatmap", "#log", "#status"]
        regions = {name: app.query_one(name).region for name in names}
        regions["header"] = app.query_one(Header).region
        regions["footer"] = app.query_one(Footer).region
        for name, region in regions.items():
            assert region.area > 0, name
            assert screen.contains_region(region), name
        for (a, ra), (b, rb) in itertools.combinations(regions.items(), 2):
            assert not ra.overlaps(rb), f"{a} {ra} overlaps {b} {rb}"
        for field in ["#set-s", "#set-frames", "#set-steps", "#set-context", "#set-seed",
                      "#set-history_guidance", "#set-checkpoint", "#set-device", "#set-precision",
                      "#generate", "#cancel", "#save"]:
            region = app.query_one(field).region
            assert region.area > 0 and regions["#form"].contains_region(region) or \
                regions["#buttons"].contains_region(region), field
        assert app.query_one("#newest-preview").frame is not None


# ---------------------------------------------------------------------------------------------- bad input


async def test_bad_file_shows_error_and_app_keeps_running(tiny_checkpoint, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    fake = tmp_path / "fake.mp4"
    fake.write_text("definitely not an mp4\n" * 20)
    app = make_app(tiny_checkpoint, DEMO)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.load_worker.wait()
        for bad in (text, fake, tmp_path / "missing.mp4"):
            await open_clip(pilot, bad)
        assert len(app.errors) == 3
        assert "not a video" in app.errors[0] and str(fake) in app.errors[1]
        assert "no such file" in app.errors[2]
        assert app.clip.path == DEMO  # nothing lost: the good clip is still loaded
        assert "Traceback" not in app.export_screenshot()
        await generate(pilot)  # and still works
        assert app.last_done is not None and len(app.last_done.video) == 4 + 6

        corrupt = tmp_path / "corrupt.safetensors"
        corrupt.write_bytes(b"\x00" * 300)
        app.query_one("#set-checkpoint", Input).value = str(corrupt)
        await generate(pilot)  # a failed run keeps the last good frames, still saveable
        assert "not a safetensors checkpoint" in app.errors[-1]
        assert len(app.frames) == 10 and not app.query_one("#save").disabled


async def test_corrupt_checkpoint_short_clip_and_no_cuda_are_messages(tiny_checkpoint, tmp_path, monkeypatch):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 64)
    short = tmp_path / "short"
    write_video(short, np.full((3, 16, 16, 3), 90, np.uint8))  # a 3-frame PNG folder
    app = make_app(corrupt, DEMO)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.load_worker.wait()
        await generate(pilot)
        assert "not a safetensors checkpoint" in app.errors[-1]
        assert app.focused is app.query_one("#set-checkpoint") and not app.running

        import torch

        if not torch.cuda.is_available():
            app.query_one("#set-checkpoint", Input).value = str(tiny_checkpoint)
            app.query_one("#set-device").value = "cuda"
            await generate(pilot)
            assert "no CUDA device" in app.errors[-1] and app.focused is app.query_one("#set-device")
            app.query_one("#set-device").value = "cpu"

        app.query_one("#set-checkpoint", Input).value = ""  # the embedded default, absent here
        monkeypatch.setenv("ARDIFF_CHECKPOINT", str(tmp_path / "nowhere.safetensors"))
        await generate(pilot)
        assert "embedded default model is not at" in app.errors[-1]

        app.query_one("#set-checkpoint", Input).value = str(tiny_checkpoint)
        await open_clip(pilot, short)
        assert app.clip.num_frames == 3
        errors = len(app.errors)
        await generate(pilot)  # a clip shorter than the context: all of it is used, and the log says so
        assert len(app.errors) == errors and app.last_done.num_context == 3
        assert any("the clip has 3 frame(s), fewer than context 4: using all 3" in m for m in app.messages)
        assert not app.running

        app.query_one("#set-steps", Input).value = "0"
        await generate(pilot)
        assert app.errors[-1] == "steps must be at least 1, got 0"
        assert len(app.frames) == 9 and "Traceback" not in app.export_screenshot()  # the take stays shown


# ------------------------------------------------------------------------------------------ modes, keys, CLI


async def test_no_images_draws_text_only(tiny_checkpoint):
    app = make_app(tiny_checkpoint, DEMO, mode="text")
    async with app.run_test(size=(100, 30)) as pilot:
        await app.load_worker.wait()
        await generate(pilot)
        assert app.last_done is not None
        from textual_image.widget._base import Image as GraphicsImage

        assert not app.query(GraphicsImage)
        allowed = set(ASCII_RAMP) | set(SHADES) | set("0123456789c ·>") | set("cleanoise(n=4)rowctx+w")
        for selector in ("#context-preview .image", "#newest-preview .image", "#filmstrip", "#heatmap"):
            widget = app.query_one(selector)
            lines = plain_lines(widget)
            assert any(seg.text.strip() for line in lines for seg in line), selector
            for line in lines:
                for seg in line:
                    assert seg.style is None or seg.style.bgcolor is None, (selector, seg)
                    if selector != "#heatmap" and not (seg.style and seg.style.color):
                        assert set(seg.text) <= allowed, (selector, seg.text)
                    assert "▀" not in seg.text, selector


async def test_help_screen_lists_keys():
    app = ArdiffApp(image_mode="halfcell", start_dir=DEMO.parent)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = app.export_screenshot()
        for key in ("esc", "ctrl+s", "F5"):
            assert key in text
        notes = str(app.screen.query_one("#help-notes").render())
        assert "hist. guide = history guidance W: 1 off" in notes
        assert app.focused is app.screen.query_one("#help-box")  # at 80x24 the notes overflow: keys scroll
        await pilot.press("end")
        await pilot.pause()
        assert app.screen.query_one("#help-box").scroll_y > 0 and "always" in app.export_screenshot()
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")  # nothing unsaved: q quits at once
        await pilot.pause()
    assert app.return_value == []


async def test_precision_from_the_command_line_and_the_form(tiny_checkpoint, monkeypatch):
    import torch

    from app_tui.main import main

    made: list[ArdiffApp] = []

    def keep(app, *args, **kwargs):  # instead of taking over the terminal: keep the app main() built
        made.append(app)
        return []

    monkeypatch.setattr(ArdiffApp, "run", keep)
    args = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--no-images"]
    args += [f"--{k}={v}" for k, v in FAST.items()]
    assert main([*args, "--precision", "fp32", str(DEMO)]) == 0
    (app,) = made
    # Pretend the CPU has native bfloat16, so "auto" would not be float32: the choice must decide.
    monkeypatch.setattr(device_mod, "cpu_supports_bf16", lambda: True)
    async with app.run_test(size=(120, 36)) as pilot:
        await app.load_worker.wait()
        assert app.query_one("#set-precision").value == "fp32" and app.read_settings().precision == "fp32"
        await generate(pilot)
        assert app.errors == [] and app.last_done is not None
        assert app.pipes._pipe.autocast_dtype is None
        assert any("on cpu, float32," in m for m in app.messages)  # describe(), in the log

        monkeypatch.setattr(device_mod, "cpu_supports_bf16", lambda: False)  # now "auto" is float32
        app.query_one("#set-precision").value = "bf16"
        seen = len(app.messages)
        await generate(pilot)  # a new precision loads the model again
        assert app.errors == [] and app.pipes._pipe.autocast_dtype == torch.bfloat16
        said = app.messages[seen:]
        assert said[0].startswith("loading") and said[0].endswith("on cpu, precision bf16 ...")
        assert any("on cpu, bfloat16 autocast" in m for m in said)


async def test_history_guidance_from_the_form_reaches_the_pipeline(tiny_checkpoint, monkeypatch):
    calls: list[tuple[str, object]] = []  # (pipeline method, its request's history_guidance)
    original = pipeline_mod.Pipeline.run

    def spy(self, request, *args, **kwargs):
        calls.append(("run", request.history_guidance))
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(pipeline_mod.Pipeline, "run", spy)
    app = make_app(tiny_checkpoint, DEMO)
    async with app.run_test(size=(120, 36)) as pilot:
        await app.load_worker.wait()
        field = app.query_one("#set-history_guidance", Input)
        assert field.value == "" and field.placeholder == "model default"
        assert "x0 = free + W (x0 - free)" in str(field.tooltip)  # the CLI's --history-guidance wording
        await generate(pilot)
        assert app.errors == [] and calls == [("run", None)]  # blank: the model's own
        plain = app.last_done.video
        assert app.pipes._pipe.history_guidance == 1.0
        assert not any("history guidance" in m for m in app.messages)  # describe() names it when not 1

        await type_into(pilot, "#set-history_guidance", "3")
        await pilot.press("escape")
        await generate(pilot)
        assert app.errors == [] and calls[-1] == ("run", 3.0)
        assert not np.array_equal(app.last_done.video, plain)  # the run used it: other frames, same seed
        assert any(m.endswith("; history guidance 3 (the model's own: 1)") for m in app.messages)  # the log

        # A model that predicts x0-prev refuses any w != 1: a message on the field, the frames kept.
        monkeypatch.setattr(app.pipes._pipe.config.diffusion, "prediction", "x0-prev")
        kept = list(app.frames)
        await generate(pilot)
        assert "history guidance needs a DiT that predicts x0 or eps, not x0-prev" in app.errors[-1]
        assert app.focused is field and not app.running and len(app.frames) == len(kept)
        assert "Traceback" not in app.export_screenshot()

        await type_into(pilot, "#set-history_guidance", "-1")
        await generate(pilot)
        assert app.errors[-1].startswith("history guidance must be a number >= 0")
        assert app.errors[-1].endswith("got '-1'")
        assert app.focused is field and len(calls) == 3  # caught in the form: the pipeline was not called

    calls.clear()
    app = make_app(tiny_checkpoint, history_guidance=0.5)  # no clip: generate from nothing
    async with app.run_test(size=(120, 36)) as pilot:
        assert app.query_one("#set-history_guidance", Input).value == "0.5"
        await generate(pilot)
        assert app.errors == [] and calls == [("run", 0.5)] and len(app.last_done.video) == 6


def test_history_guidance_the_pipeline_refuses_is_a_failed_on_the_field(tiny_checkpoint):
    """Settings can hold any float (the form checks, not the dataclass): the sampler's ValueError must come
    back as one Failed naming the field, never a traceback file."""
    cache = PipelineCache()
    for weight in (-1.0, float("nan")):
        for context in (None, np.zeros((4, 16, 16, 3), np.uint8)):
            settings = Settings(checkpoint=tiny_checkpoint, device="cpu", history_guidance=weight, **FAST)
            events: list[object] = []
            run_job(Job(settings, context), cache, events.append)
            (failed,) = events
            assert isinstance(failed, Failed), failed
            assert failed.message == f"history guidance must be a number >= 0, got {weight!r}"
            assert failed.field == "history_guidance" and failed.details is None
    events = []
    settings = Settings(checkpoint=tiny_checkpoint, device="cpu", history_guidance=1.0, **FAST)
    run_job(Job(settings, None), cache, events.append)
    assert isinstance(events[0], Started) and "history guidance" not in events[0].description  # the model's


def test_screenshot_cli_writes_svg(tmp_path):
    from app_tui.main import main

    out = tmp_path / "shot.svg"
    assert main(["--screenshot", str(out), "--size", "80x24", str(DEMO)]) == 0
    svg = out.read_text()
    assert svg.startswith("<svg") and "demo.mp4" in svg


def test_settings_and_heatmap_helpers():
    good = {"s": "5", "frames": "16", "steps": "50", "context": "8", "seed": "0", "checkpoint": " ",
            "device": "cpu"}
    ok = parse_settings(good)
    assert ok == Settings(device="cpu")
    with pytest.raises(SettingsError) as err:
        parse_settings({"s": "x", "frames": "1", "steps": "1", "context": "1", "seed": "0"})
    assert err.value.field == "s"
    with pytest.raises(SettingsError) as err:
        parse_settings({"s": "1", "frames": "1", "steps": "1", "context": "1", "seed": "0", "device": "tpu"})
    assert err.value.field == "device"
    assert ok.precision == "auto" and PRECISIONS == ("auto", "fp32", "bf16")
    for precision in PRECISIONS:
        assert parse_settings({**good, "precision": precision}).precision == precision
    with pytest.raises(SettingsError) as err:
        parse_settings({**good, "precision": "fp16"})
    assert err.value.field == "precision" and "auto, fp32, bf16" in str(err.value)
    from app_tui.main import build_parser

    assert build_parser().parse_args(["--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--precision", "fp16"])
    assert list(cell_indices(4, 10)) == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]  # every frame shown, width used
    assert list(cell_indices(10, 5)) == [0, 2, 4, 6, 8]


def test_history_guidance_setting_parses(monkeypatch):
    good = {"s": "5", "frames": "32", "steps": "50", "context": "8", "seed": "0"}
    assert Settings().history_guidance is None
    assert parse_settings(good).history_guidance is None  # absent: the model's own
    for blank in ("", "  "):
        assert parse_settings({**good, "history_guidance": blank}).history_guidance is None
    for text, weight in (("3", 3.0), (" 1.5 ", 1.5), ("0", 0.0), ("1", 1.0), ("2e0", 2.0)):
        parsed = parse_settings({**good, "history_guidance": text}).history_guidance
        assert parsed == weight and isinstance(parsed, float), text
    for bad in ("-1", "-0.5", "nan", "inf", "1e999", "abc", "1,5"):
        with pytest.raises(SettingsError) as err:
            parse_settings({**good, "history_guidance": bad})
        assert err.value.field == "history_guidance", bad
        assert str(err.value) == (f"history guidance must be a number >= 0 (1 = off), or blank for the "
                                  f"model's own, got {bad!r}")
    from app_tui.main import build_parser, main

    parser = build_parser()
    assert parser.parse_args([]).history_guidance is None
    assert parser.parse_args(["--history-guidance", "2.5"]).history_guidance == 2.5
    for bad in ("-1", "nan", "abc"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--history-guidance", bad])
    assert "--history-guidance W" in parser.format_help()
    made: list[ArdiffApp] = []
    monkeypatch.setattr(ArdiffApp, "run", lambda app, *args, **kwargs: made.append(app) or [])
    assert main(["--no-images", "--history-guidance", "2"]) == 0 and made[0].initial.history_guidance == 2.0


def test_settings_and_parsers_do_not_load_torch():
    """`ardiff-tui --help` and the desktop window come up before torch loads (seconds): what they read at start
    (settings, the precision list, the argument parsers) must not import it."""
    code = ("import sys; import app_tui.main, app_tui.settings, app_gui.settings; "
            "app_tui.main.build_parser(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
