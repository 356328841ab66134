"""ardiff-tui, issue 23: takes, the unsaved-work prompts, the player's keys, an honest footer, remembered
settings, save options, adapting, the idle progress bar, the re-wrapping log and the model loaded behind the
first paint. Textual pilot tests with the tiny random-weight checkpoint (CPU, seeded, seconds each)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("textual")
pytest.importorskip("textual_image")

from textual.widgets import Footer, Input  # noqa: E402
from textual.widgets._footer import FooterKey  # noqa: E402

import app_tui.app as app_mod  # noqa: E402
import engine.pipeline as pipeline_mod  # noqa: E402
from app_tui.app import ArdiffApp  # noqa: E402
from app_tui.player import Playhead  # noqa: E402
from app_tui.prefs import Prefs, config_path  # noqa: E402
from app_tui.prompts import UnsavedScreen  # noqa: E402
from app_tui.screens import SaveScreen  # noqa: E402
from app_tui.settings import Settings  # noqa: E402
from app_tui.takes import CompareScreen, TakesScreen  # noqa: E402
from engine import settings_file  # noqa: E402
from engine.pipeline import Adapted, Adapting, FrameReady  # noqa: E402
from engine.run import DEFAULT_ADAPT_STEPS, RunRequest  # noqa: E402
from engine.video_io import probe_video, read_video  # noqa: E402
from tests.test_tui import DEMO, FAST, finish, generate, model_ready, open_clip, paste_into  # noqa: E402


@pytest.fixture(autouse=True)
def _own_config(tmp_path, monkeypatch):
    """Settings files go to a fresh folder: a test never reads or writes the person's own tui.json."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def clips(tmp_path) -> tuple[Path, Path]:
    """Two clips in a folder of the test's own, so saves beside a clip never touch the repository."""
    folder = tmp_path / "clips"
    folder.mkdir()
    a, b = folder / "tree.mp4", folder / "city.mp4"
    shutil.copy(DEMO, a)
    shutil.copy(DEMO, b)
    return a, b


def make_app(checkpoint: Path, clip: Path | None = None, prefs: Prefs | None = None, **settings) -> ArdiffApp:
    values = {**FAST, **settings}
    return ArdiffApp(clip=clip, settings=Settings(checkpoint=checkpoint, device="cpu", **values),
                     image_mode="text", start_dir=(clip or DEMO).parent, prefs=prefs)


def footer_keys(app) -> dict[str, str]:
    """What the footer offers now: description -> key as shown."""
    return {key.description: key.key_display for key in app.screen.query(FooterKey)}


async def wait_for(pilot, condition, tries: int = 200) -> None:
    for _ in range(tries):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError("condition not met in time")


# ---------------------------------------------------------------------------------------------- takes


async def test_takes_list_show_save_delete_compare(tiny_checkpoint, clips):
    clip, _ = clips
    app = make_app(tiny_checkpoint, clip)
    async with app.run_test(size=(120, 36)) as pilot:
        await app.load_worker.wait()
        await generate(pilot)
        await paste_into(pilot, "#set-seed", "7")
        await pilot.press("escape")
        await generate(pilot)  # a second run: a second take, the first kept
        first, second = list(app.takes)
        assert (first.number, second.number) == (1, 2) and app.takes.current is second
        assert first.request.seed == 0 and second.request.seed == 7
        assert not np.array_equal(first.video[-1], second.video[-1])

        await pilot.press("t")
        screen = app.screen
        assert isinstance(screen, TakesScreen)
        shown = [str(option.prompt) for option in screen.query_one("#takes-list").options]
        assert shown == ["  " + first.label, "▶ " + second.label]  # Take.label, the shown one marked
        assert "tree.mp4" in first.label and first.label.endswith("unsaved")
        await pilot.press("up", "enter")  # show take 1
        await pilot.pause()
        assert not isinstance(app.screen, TakesScreen) and app.takes.current is first
        assert np.array_equal(np.stack(app.frames), first.video)

        await pilot.press("t", "s")  # save the highlighted take (1) from the list
        await pilot.pause()
        assert isinstance(app.screen, SaveScreen)
        assert app.screen.query_one("#save-path", Input).value == str(clip.parent / "tree_continued.mp4")
        await pilot.press("enter")
        await app.save_worker.wait()
        await pilot.pause()
        assert first.saved_to == (clip.parent / "tree_continued.mp4").resolve()
        assert not first.label.endswith("unsaved") and isinstance(app.screen, TakesScreen)
        assert len(read_video(first.saved_to)) == len(first.video)

        await pilot.press("down", "d")  # take 2 is unsaved: deleting asks
        await pilot.pause()
        assert isinstance(app.screen, UnsavedScreen)
        await pilot.press("escape")  # cancel: nothing deleted
        await pilot.pause()
        assert len(app.takes) == 2 and isinstance(app.screen, TakesScreen)

        await pilot.press("home", "c", "down", "c")  # compare take 1 with take 2: side by side
        await pilot.pause()
        compare = app.screen
        assert isinstance(compare, CompareScreen) and compare.index == 0
        left, right = compare.query_one("#compare-0"), compare.query_one("#compare-1")
        assert np.array_equal(left.frame, first.video[0]) and np.array_equal(right.frame, second.video[0])
        await pilot.press("right", "full_stop")  # step together
        assert compare.index == 2
        assert np.array_equal(left.frame, first.video[2]) and np.array_equal(right.frame, second.video[2])
        await pilot.press("end")
        assert compare.index == len(first.video) - 1 and np.array_equal(right.frame, second.video[-1])
        await pilot.press("comma", "home")
        assert compare.index == 0
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, TakesScreen)

        await pilot.press("d")  # take 2 again (still highlighted): discard it this time
        await pilot.pause()
        await pilot.press("d")
        await pilot.pause()
        assert [t.number for t in app.takes] == [1] and app.takes.current is first
        await pilot.press("d")  # take 1 is saved: deleted without asking
        await pilot.pause()
        assert len(app.takes) == 0 and app.takes.current is None and app.frames == []
        assert app.query_one("#save").disabled


async def test_new_clip_never_saves_one_clips_frames_under_anothers_name(tiny_checkpoint, clips):
    tree, city = clips
    app = make_app(tiny_checkpoint, tree)
    async with app.run_test(size=(120, 36)) as pilot:
        await app.load_worker.wait()
        await generate(pilot)
        tree_take = app.takes.current

        await paste_into(pilot, "#path", str(city))
        await pilot.press("enter")  # an unsaved take: opening asks first
        await pilot.pause()
        assert isinstance(app.screen, UnsavedScreen)
        await pilot.press("escape")  # cancel: the clip is not opened
        await pilot.pause()
        assert app.clip.path == tree and app.takes.current is tree_take

        await pilot.click("#path")
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("s")  # save, then open
        await wait_for(pilot, lambda: app.load_worker is not None and app.clip is not None
                       and app.clip.path == city)
        assert tree_take.saved_to == (tree.parent / "tree_continued.mp4").resolve()
        assert len(read_video(tree_take.saved_to)) == len(tree_take.video)
        # the old result is gone from the screen, kept in the list with its own clip's name
        assert app.takes.current is None and app.frames == [] and app.query_one("#save").disabled
        assert app.query_one("#newest-preview").frame is None
        assert list(app.takes) == [tree_take] and "tree.mp4" in tree_take.label
        await pilot.press("ctrl+s")
        assert not isinstance(app.screen, SaveScreen)  # nothing of city's to save yet

        await generate(pilot)
        city_take = app.takes.current
        assert city_take.clip == city and city_take.number == 2
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen.query_one("#save-path", Input).value == str(city.parent / "city_continued.mp4")
        await pilot.press("escape")
        app.show_take(tree_take.number)  # the tree take again, with city open: still tree's name
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen.query_one("#save-path", Input).value == str(tree.parent / "tree_continued-2.mp4")
        await pilot.press("escape")


# ---------------------------------------------------------------------------------------------- prompts


async def test_quit_asks_and_save_writes_every_unsaved_take(tiny_checkpoint, clips):
    clip, _ = clips
    app = make_app(tiny_checkpoint, clip)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.load_worker.wait()
        await generate(pilot)
        await generate(pilot)
        for key in ("q", "ctrl+q", "ctrl+c"):
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, UnsavedScreen), key
            prompt = app.screen
            assert str(prompt.query_one("#prompt-question").render()) == "Quit: 2 takes not saved."
            details = [str(label.render()) for label in prompt.query(".prompt-detail")]
            assert details[0].endswith(str(clip.parent / "tree_continued.mp4"))  # what Save writes where
            assert [str(b.label) for b in prompt.query("Button")] == ["Save", "Discard", "Cancel"]
            await pilot.press("escape")
            await pilot.pause()
            assert app.is_running and app.return_value is None and len(app.takes) == 2
        await pilot.press("q")
        await pilot.pause()
        await pilot.click("#prompt-save")  # the button, as a mouse user would
        await wait_for(pilot, lambda: app.return_value is not None)
    written = [clip.parent / "tree_continued.mp4", clip.parent / "tree_continued-2.mp4"]
    assert app.return_value == [p.resolve() for p in written]
    assert all(len(read_video(p)) == 4 + 6 for p in written)


async def test_quit_mid_run_cancels_first_and_keeps_the_partial_take(tiny_checkpoint, clips):
    clip, _ = clips
    app = make_app(tiny_checkpoint, clip, frames=12)
    emit = app._emit
    made: list[int] = []

    def quit_at_third(job, event):  # the person presses q while the third new frame is drawn
        emit(job, event)
        if isinstance(event, FrameReady):
            made.append(event.index)
            if len(made) == 1:  # ctrl+o mid-run: refused, saying why
                app.call_from_thread(app.action_open)
            if len(made) == 3:
                app.call_from_thread(lambda: app.run_worker(app.action_quit(), group="test-quit"))

    app._emit = quit_at_third
    async with app.run_test(size=(100, 30)) as pilot:
        await app.load_worker.wait()
        await model_ready(pilot)
        await pilot.press("g")
        await wait_for(pilot, lambda: isinstance(app.screen, UnsavedScreen))
        (take,) = app.takes
        assert take.cancelled and 3 <= take.num_new < 12 and not app.running
        assert app.last_done.cancelled
        told = [n.message for n in app._notifications]
        assert "a run is in progress: esc cancels it, then open a clip" in told
        assert app.focused is not app.query_one("#path")
        await pilot.press("d")  # discard: leaves
        await pilot.pause()
    assert app.return_value == []


# ---------------------------------------------------------------------------------------------- keys


def test_playhead_steps_and_stops_like_a_player():
    head = Playhead()
    head.reset(5)
    assert head.index == 4 and not head.playing  # a new result shows its newest frame
    head.toggle()  # at the end, Space plays from the start
    assert head.playing and head.index == 0
    for expected in (1, 2, 3, 4):
        head.advance()
        assert head.index == expected
    assert not head.playing  # stops at the last frame
    head.step(-10)
    assert head.index == 0
    head.step(2)
    head.last()
    assert head.index == 4
    head.first()
    assert head.index == 0


async def test_player_keys_play_and_scrub_the_result(tiny_checkpoint):
    app = make_app(tiny_checkpoint, DEMO)
    async with app.run_test(size=(120, 36)) as pilot:
        await app.load_worker.wait()
        keys = footer_keys(app)
        assert "Play" not in keys and "Step" not in keys  # nothing to play yet: not offered
        await generate(pilot)
        take = app.takes.current
        result = app.query_one("#newest-preview")
        assert app.focused is result  # the result panel has the focus: its keys work at once
        keys = footer_keys(app)
        assert keys["Play"] == "space" and keys["Step"] == "←/→"
        assert app.player.head.index == len(take.video) - 1
        await pilot.press("home")
        assert np.array_equal(result.frame, take.video[0])
        assert "frame 1/10 (context)" in result.border_subtitle
        await pilot.press("full_stop", "right")
        assert app.player.head.index == 2
        await pilot.press("comma")
        assert app.player.head.index == 1 and np.array_equal(result.frame, take.video[1])
        await pilot.press("left", "left")
        assert app.player.head.index == 0
        await pilot.press("end")
        assert app.player.head.index == 9 and "frame 10/10 (new)" in result.border_subtitle
        await pilot.press("space")  # at the end: plays from the first frame
        assert app.player.playing
        await wait_for(pilot, lambda: not app.player.playing)  # 30 fps: ten frames in about 0.3 s
        assert app.player.head.index == 9
        await pilot.press("space")
        await wait_for(pilot, lambda: app.player.head.index >= 2)
        await pilot.press("space")  # pause
        paused_at = app.player.head.index
        assert not app.player.playing and 0 < paused_at < 9
        await pilot.pause(0.2)
        assert app.player.head.index == paused_at
        help_text = app.export_screenshot()
        assert "Play" in help_text


@pytest.mark.parametrize("size", [(80, 24), (60, 18)])
async def test_footer_offers_only_keys_that_work_in_a_text_field(tiny_checkpoint, size):
    app = make_app(tiny_checkpoint, DEMO)
    async with app.run_test(size=size) as pilot:
        await app.load_worker.wait()
        await model_ready(pilot)
        await pilot.pause()
        keys = footer_keys(app)
        assert (keys["Generate"], keys["Open"], keys["Quit"]) == ("g", "o", "q")
        field = app.query_one("#set-checkpoint", Input)
        field.focus()
        await pilot.pause()
        keys = footer_keys(app)
        assert (keys["Generate"], keys["Open"], keys["Quit"], keys["Takes"]) == ("^g", "^o", "^q", "^t")
        assert keys["Leave field"] == "esc"
        before = field.value
        await pilot.press("end", "g", "o", "q", "t")  # the field types them: no run, no quit
        await pilot.pause()
        assert field.value == before + "goqt" and app.is_running and not app.running
        assert app.focused is field and app.screen is app.main_screen
        field.value = before
        await pilot.press("ctrl+g")  # the footer's key works from the field
        await finish(pilot)
        assert app.errors == [] and len(app.takes) == 1
        await pilot.press("escape")  # leaves the field: the letters are back
        await pilot.pause()
        assert app.focused is not field and footer_keys(app)["Generate"] == "g"
        await pilot.press("ctrl+o")
        assert app.focused is app.query_one("#path")

        # every control is on screen or scrolls into view (tab moves the focus there)
        screen = app.screen.region
        assert screen.contains_region(app.query_one("#generate").region)
        for name in ("#path", "#files", "#set-s", "#set-frames", "#set-steps", "#set-context", "#set-seed",
                     "#set-history_guidance", "#set-checkpoint", "#set-device", "#set-precision",
                     "#set-adapt",
                     "#generate", "#save"):
            widget = app.query_one(name)
            widget.focus()
            await pilot.pause()
            region = widget.region
            assert region.area > 0 and screen.contains_region(region), (name, region)


# ---------------------------------------------------------------------------------------------- settings


def test_settings_file_round_trip_and_fallback(tmp_path):
    path = tmp_path / "sub" / "tui.json"
    prefs = Prefs.load(path)
    assert prefs.settings() == Settings() and (prefs.save_part, prefs.save_size) == ("all", "model")
    prefs.s, prefs.frames, prefs.history_guidance, prefs.adapt = 3, 9, 2.5, True
    prefs.save_part, prefs.save_size, prefs.last_dir, prefs.device = "new", "input", str(tmp_path), "cpu"
    assert prefs.save() and not [p for p in path.parent.iterdir() if p.name != "tui.json"]  # no temp left
    again = Prefs.load(path)
    assert again == prefs and again.settings().adapt and again.save_options.part == "new"
    data = json.loads(path.read_text())
    data.update(s="five", steps=True, frames=-3, save_part="odd", device="tpu", history_guidance=float("nan"))
    path.write_text(json.dumps(data))
    broken = Prefs.load(path)  # each bad field falls back; the good ones stay
    assert (broken.s, broken.steps, broken.frames) == (RunRequest.s, RunRequest.steps, RunRequest.new_frames)
    assert broken.save_part == "all" and broken.device == "auto" and broken.history_guidance is None
    assert broken.save_size == "input" and broken.adapt and broken.last_dir == str(tmp_path)
    path.write_text("{ not json")
    assert Prefs.load(path) == Prefs()
    # the shared module: type checks per field, atomic write refused by a read-only place -> False
    assert settings_file.write_json(tmp_path / "a-file" / "x.json", {}) is True
    (tmp_path / "blocker").write_text("")
    assert settings_file.write_json(tmp_path / "blocker" / "x.json", {"a": 1}) is False


async def test_settings_remembered_between_sessions(tiny_checkpoint, clips):
    clip, _ = clips
    assert config_path().is_relative_to(Path(str(config_path().parents[2])))
    app = ArdiffApp(clip=clip, image_mode="text", prefs=Prefs.load())
    async with app.run_test(size=(120, 36)) as pilot:
        await app.load_worker.wait()
        form = {"#set-s": "3", "#set-frames": "7", "#set-steps": "6", "#set-context": "5", "#set-seed": "11",
                "#set-history_guidance": "1.5", "#set-checkpoint": str(tiny_checkpoint)}
        for selector, text in form.items():
            await paste_into(pilot, selector, text)
        app.query_one("#set-device").value = "cpu"
        app.query_one("#set-adapt").value = True
        await pilot.press("escape", "q")  # nothing unsaved: quits at once, remembering
        await pilot.pause()
    stored = Prefs.load()
    assert (stored.s, stored.frames, stored.steps, stored.context, stored.seed) == (3, 7, 6, 5, 11)
    assert stored.history_guidance == 1.5 and stored.checkpoint == str(tiny_checkpoint)
    assert stored.device == "cpu" and stored.adapt and stored.last_dir == str(clip.parent.resolve())

    from app_tui.main import main

    made: list[ArdiffApp] = []
    original_run = ArdiffApp.run
    ArdiffApp.run = lambda self, *a, **k: made.append(self) or []
    try:
        assert main(["--no-images", "--steps", "9"]) == 0  # an option given wins; the rest is remembered
    finally:
        ArdiffApp.run = original_run
    (again,) = made
    assert again.initial == Settings(s=3, frames=7, steps=9, context=5, seed=11, history_guidance=1.5,
                                     checkpoint=tiny_checkpoint, device="cpu", adapt=True)
    assert again.start_dir == clip.parent.resolve()  # the last folder


# ---------------------------------------------------------------------------------------------- saving


async def test_save_part_and_size_are_offered_and_remembered(tiny_checkpoint, clips, tmp_path):
    clip, _ = clips
    prefs = Prefs.load()
    app = make_app(tiny_checkpoint, clip, prefs=prefs)
    async with app.run_test(size=(120, 36)) as pilot:
        await app.load_worker.wait()
        await generate(pilot)
        take = app.takes.current
        await pilot.press("ctrl+s")
        await pilot.pause()
        dialog = app.screen
        part, size = dialog.query_one("#save-part"), dialog.query_one("#save-size")
        assert (part.value, size.value) == ("all", "model")
        part.value, size.value = "new", "input"
        out = tmp_path / "new-only.mp4"
        await paste_into(pilot, "#save-path", str(out))
        await pilot.press("enter")
        await app.save_worker.wait()
        await pilot.pause()
        video = read_video(out)
        side = min(probe_video(clip).height, probe_video(clip).width)  # the square the model saw, full size
        assert video.shape == (take.num_new, side, side, 3)
        assert (prefs.save_part, prefs.save_size) == ("new", "input")
        await pilot.press("ctrl+s")  # offered again as chosen
        await pilot.pause()
        assert app.screen.query_one("#save-part").value == "new"
        assert app.screen.query_one("#save-size").value == "input"
        await pilot.press("escape")
        await pilot.press("q")
        await pilot.pause()
    assert Prefs.load().save_options.part == "new"


# ---------------------------------------------------------------------------------------------- adapting


async def test_adapt_toggle_events_and_cancel(tiny_checkpoint, monkeypatch):
    requests: list[RunRequest] = []
    original = pipeline_mod.Pipeline.run

    clips = []

    def adapting_run(self, request, frames=None, cancel=None, adapt_clip=None):  # adapt events, then the run
        requests.append(request)
        clips.append(adapt_clip)
        inner = original(self, dataclasses.replace(request, adapt_steps=0), frames, cancel)

        def events():
            for step in range(1, min(request.adapt_steps, 3) + 1):
                if cancel is not None and cancel.is_set():
                    break
                yield Adapting(step, request.adapt_steps, 0.5 / step, 0.1 * step, 1.0)
            if request.adapt_steps:
                yield Adapted(True, "adapted to the clip: held-out loss 0.50 -> 0.40", 0.5, 0.4)
            yield from inner

        return events()

    monkeypatch.setattr(pipeline_mod.Pipeline, "run", adapting_run)
    app = make_app(tiny_checkpoint)
    async with app.run_test(size=(120, 36)) as pilot:
        box = app.query_one("#set-adapt")
        assert not box.value and box.disabled  # off by default; nothing to adapt to without a clip
        box.value = True
        await generate(pilot)  # from nothing: never adapts
        assert requests[-1].adapt_steps == 0

        app.open_clip(DEMO)  # (the take from nothing stays: asking about it is tested elsewhere)
        await app.load_worker.wait()
        await pilot.pause()
        assert not app.query_one("#set-adapt").disabled
        seen: list[tuple[str, float | None, float]] = []  # the status line and the bar as each was drawn
        stats = app._stats

        def watch(text):
            stats(text)
            bar = app.query_one("#progress")
            seen.append((text, bar.total, bar.progress))

        app._stats = watch
        await generate(pilot)
        assert requests[-1].adapt_steps == DEFAULT_ADAPT_STEPS
        # adapting learns from the clip's last frames read at the model's size, more than the context
        assert clips[-1] is not None and clips[-1].shape[1:3] == (16, 16) and len(clips[-1]) > 8
        assert any("adapted to the clip: held-out loss 0.50 -> 0.40" in m for m in app.messages)
        adapting = [entry for entry in seen if entry[0].startswith("adapting")]
        first_step = f"adapting 1/{DEFAULT_ADAPT_STEPS}  loss 0.5000  ETA 1.0 s"
        assert adapting[0] == (first_step, DEFAULT_ADAPT_STEPS, 1)
        assert [entry[2] for entry in adapting] == [1, 2, 3]
        emit = app._emit

        def cancel_while_adapting(job, event):
            emit(job, event)
            if isinstance(event, Adapting):
                app.call_from_thread(app.action_cancel)

        app._emit = cancel_while_adapting
        takes = len(app.takes)
        await generate(pilot)
        assert app.last_done.cancelled and not app.running and len(app.takes) == takes
        assert any("cancelling" in m for m in app.messages)


# ---------------------------------------------------------------------------------------------- small things


async def test_idle_progress_bar_is_still_and_defaults_are_the_engines(tiny_checkpoint):
    app = ArdiffApp(image_mode="text", start_dir=DEMO.parent, preload_model=False)
    async with app.run_test(size=(100, 30)):
        bar = app.query_one("#progress")
        assert bar.total is not None and bar.percentage == 0.0  # not the indeterminate pulse
        settings = app.read_settings()
        request = RunRequest()
        assert (settings.s, settings.frames, settings.steps, settings.context, settings.seed) == (
            request.s, request.new_frames, request.steps, request.context, request.seed)
        assert (settings.device, settings.precision) == (request.device, request.precision)
        assert not settings.adapt


async def test_log_rewraps_after_a_resize():
    app = ArdiffApp(image_mode="text", start_dir=DEMO.parent, preload_model=False)
    words = " ".join(f"word{i}" for i in range(40))
    async with app.run_test(size=(200, 60)) as pilot:
        app.say(words)
        await pilot.pause()
        log = app.query_one("#log")
        wide = log.virtual_size.height
        await pilot.resize_terminal(60, 18)
        await pilot.pause()
        await pilot.pause()
        assert log.virtual_size.height > wide  # the same message, wrapped again to the new width
        text = app.query_one("#log-text")
        lines = [strip.text for strip in text.render_lines(text.region.reset_offset)]
        assert max(len(line.rstrip()) for line in lines) <= log.scrollable_content_region.width
        shown = " ".join(" ".join(lines).split())
        assert "word39" in shown and "word20" in shown  # nothing cut off at the old width


async def test_layout_first_then_the_model(tiny_checkpoint, monkeypatch):
    gate = threading.Event()
    real = app_mod.preload

    def slow_preload(settings, cache):
        gate.wait(10)
        return real(settings, cache)

    monkeypatch.setattr(app_mod, "preload", slow_preload)
    app = make_app(tiny_checkpoint, DEMO)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.load_worker.wait()
        await pilot.pause(0.2)
        assert app.query_one(Footer).region.area > 0 and app.clip is not None  # drawn, clip open
        assert app.model_loading and app.query_one("#generate").disabled
        assert "loading the model" in str(app.query_one("#stats").render())
        await pilot.press("g")
        await pilot.pause()
        assert not app.running and app.job is None  # refused with a notice, not queued silently
        gate.set()
        await model_ready(pilot)
        assert not app.model_loading and not app.query_one("#generate").disabled
        assert any(m.startswith("model ready:") for m in app.messages)
        await generate(pilot)
        assert len(app.takes) == 1


def test_app_module_does_not_load_torch():
    """The layout comes up before torch loads (seconds): importing the app must not import it."""
    code = "import sys, app_tui.app, app_tui.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
