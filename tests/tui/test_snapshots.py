"""SVG snapshots of the main screens at fixed sizes (pytest-textual-snapshot; `--snapshot-update` to re-record).

Screens replay the recorded runs in sample_data/runs/, so every figure on them is fixed.
"""

import time

import pytest

from tests.conftest import REPO, SAMPLE_DATA
from tests.tui.pilot_helpers import type_text, wait_until
from tui.app import LoradeckApp

# Relative to the repository (the tests chdir there), so no machine-specific path lands in a snapshot.
RUNS = SAMPLE_DATA.relative_to(REPO) / "runs"
DEMO = str(SAMPLE_DATA.relative_to(REPO) / "configs" / "demo.toml")


@pytest.fixture(autouse=True)
def utc_clock(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


async def settle(pilot):
    await pilot.pause(0.5)
    from textual.widgets import Input

    for field in pilot.app.screen.query(Input):  # a blinking cursor differs from run to run
        field.cursor_blink = False
    await pilot.pause(0.05)


def test_home_snapshot(snap_compare):
    assert snap_compare(LoradeckApp(runs_dir=RUNS, config_path=DEMO), terminal_size=(110, 30), run_before=settle)


def test_monitor_gpu_session_snapshot(snap_compare):
    app = LoradeckApp(runs_dir=RUNS, attach_to=RUNS / "t4-session")
    assert snap_compare(app, terminal_size=(110, 34), run_before=settle)


def test_monitor_fits_80x24(snap_compare):
    app = LoradeckApp(runs_dir=RUNS, attach_to=RUNS / "demo-finished")
    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)


def test_new_run_snapshot(snap_compare):
    app = LoradeckApp(runs_dir=RUNS, config_path=DEMO)
    assert snap_compare(app, terminal_size=(110, 40), press=["n"], run_before=settle)


def test_compare_snapshot(snap_compare):
    async def mark_two(pilot):
        await settle(pilot)
        await pilot.press("down", "space", "down", "space", "c")  # the two session runs, below demo-evaluated
        await settle(pilot)
    assert snap_compare(LoradeckApp(runs_dir=RUNS), terminal_size=(110, 30), run_before=mark_two)


def test_light_theme_snapshot(snap_compare):
    async def light(pilot):
        pilot.app.theme = "loradeck-light"
        await settle(pilot)
    app = LoradeckApp(runs_dir=RUNS, attach_to=RUNS / "kaggle-deadline")
    assert snap_compare(app, terminal_size=(100, 30), run_before=light)


def test_high_contrast_theme_snapshot(snap_compare):
    async def contrast(pilot):
        pilot.app.theme = "loradeck-high-contrast"
        await settle(pilot)
    assert snap_compare(LoradeckApp(runs_dir=RUNS, config_path=DEMO), terminal_size=(100, 30), run_before=contrast)


def test_dataset_screen_snapshot(snap_compare, default_model_dir):
    from tui.screens.dataset import DatasetScreen

    async def inspected(pilot):
        pilot.app.push_screen(DatasetScreen(str(SAMPLE_DATA.relative_to(REPO) / "demo_train.jsonl"), max_length=96))
        for _ in range(600):
            await pilot.pause(0.1)
            if pilot.app.screen.report is not None:
                break
        await pilot.pause(1.0)  # layout settles after the summary grows; the histogram redraws at its final size
    assert snap_compare(LoradeckApp(runs_dir=RUNS), terminal_size=(120, 36), run_before=inspected)


def open_recorded_chat(pilot):
    """The chat screen over the recorded worker (the process boundary); ratings go under the scratch cwd."""
    import random
    from pathlib import Path

    from tests.fakes import RecordedChatWorker
    from tui.screens.chat import ChatScreen

    screen = ChatScreen("smollm2-135m-instruct", ["runs/demo"], ratings_dir=Path("runs/demo/chat"),
                        client_factory=RecordedChatWorker)
    screen.rng = random.Random(1)
    pilot.app.push_screen(screen)
    return screen


async def ask(pilot, screen, question="What is the capital of Norway?"):
    await wait_until(pilot, lambda: screen.worker_state == "ready" and not screen.query_one("#chat-input").disabled,
                     timeout=10)
    await type_text(pilot, question)
    await pilot.press("enter")
    await wait_until(pilot, lambda: not screen.generating, timeout=10)
    screen.query_one("#chat-input").cursor_blink = False  # a blinking cursor makes the picture depend on time
    await settle(pilot)


def test_chat_side_by_side_snapshot(snap_compare, tmp_path, monkeypatch):
    async def side_by_side(pilot):
        screen = open_recorded_chat(pilot)
        await ask(pilot, screen)
    monkeypatch.chdir(tmp_path)
    assert snap_compare(LoradeckApp(runs_dir=tmp_path / "runs"), terminal_size=(110, 26), run_before=side_by_side)


def test_chat_blind_rated_snapshot(snap_compare, tmp_path, monkeypatch):
    async def blind_and_rate(pilot):
        screen = open_recorded_chat(pilot)
        await wait_until(pilot, lambda: screen.worker_state == "ready", timeout=10)
        await pilot.press("ctrl+b")
        await ask(pilot, screen)
        await pilot.press("b")
        await settle(pilot)
        pilot.app.clear_notifications()  # toasts come and go with time; the reveal stays in the tally line
        await settle(pilot)
    monkeypatch.chdir(tmp_path)
    assert snap_compare(LoradeckApp(runs_dir=tmp_path / "runs"), terminal_size=(110, 26), run_before=blind_and_rate)


def test_eval_screen_snapshot(snap_compare):
    from tui.screens.evaluation import EvalScreen

    async def open_report(pilot):
        pilot.app.push_screen(EvalScreen(RUNS / "demo-evaluated"))
        await pilot.pause(0.5)

    assert snap_compare(LoradeckApp(runs_dir=RUNS), terminal_size=(110, 40), run_before=open_report)


def test_export_dialog_snapshot(snap_compare):
    from tui.screens.export import ExportScreen

    async def open_export(pilot):
        pilot.app.push_screen(ExportScreen(RUNS / "demo-evaluated"))
        await settle(pilot)
    assert snap_compare(LoradeckApp(runs_dir=RUNS), terminal_size=(110, 30), run_before=open_export)


def test_the_stop_question_wraps_at_80x24(snap_compare):
    from tui.screens.monitor import ConfirmScreen

    async def open_dialog(pilot):
        pilot.app.push_screen(ConfirmScreen("Stop 20261124-233012-a-rather-long-run-name? The adapter is saved "
                                            "first."))
        await settle(pilot)
    assert snap_compare(LoradeckApp(runs_dir=RUNS), terminal_size=(80, 24), run_before=open_dialog)


def test_the_prompt_set_question_wraps_at_80x24(snap_compare):
    from tui.screens.chat import PathScreen

    async def open_dialog(pilot):
        pilot.app.push_screen(PathScreen("Prompt set: a file (.txt one per line, or a dataset) or a run directory "
                                         "(its held-out rows)", "prompts.txt"))
        await settle(pilot)
    assert snap_compare(LoradeckApp(runs_dir=RUNS), terminal_size=(80, 24), run_before=open_dialog)


@pytest.mark.parametrize("screen", ["home", "new-run", "compare", "eval", "export"])
def test_every_screen_is_laid_out_for_80x24(snap_compare, screen):
    """At 80×24 the first things stay on screen: Home's run columns (the side panels step aside), the form's
    fields, the compare curve, the eval table, the export choices."""
    from tui.screens.evaluation import EvalScreen
    from tui.screens.export import ExportScreen

    async def open_screen(pilot):
        await settle(pilot)
        if screen == "new-run":
            await pilot.press("n")
        elif screen == "compare":
            await pilot.press("down", "space", "down", "space", "c")
        elif screen == "eval":
            pilot.app.push_screen(EvalScreen(RUNS / "demo-evaluated"))
        elif screen == "export":
            pilot.app.push_screen(ExportScreen(RUNS / "demo-evaluated"))
        await settle(pilot)
    assert snap_compare(LoradeckApp(runs_dir=RUNS, config_path=DEMO), terminal_size=(80, 24), run_before=open_screen)
