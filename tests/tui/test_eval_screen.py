"""The Eval screen as a person uses it: from Home and the monitor, the recorded demo report, the answers side by
side with the word diff, and a new report written by the real `loradeck eval` with its progress bar."""

from __future__ import annotations

from textual.widgets import DataTable, ProgressBar, Static, TabbedContent

from tests.conftest import SAMPLE_DATA
from tests.tui.pilot_helpers import select_run, wait_until
from tui.app import LoradeckApp
from tui.screens.evaluation import EvalScreen

RUNS = SAMPLE_DATA / "runs"


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def cells(table: DataTable) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row_at(row)] for row in range(table.row_count)]


async def _open_from_home(pilot, app, run_name: str) -> None:
    await select_run(pilot, app, run_name)
    await pilot.press("v")
    await wait_until(pilot, lambda: isinstance(app.screen, EvalScreen))


async def test_home_shows_the_last_report_and_opens_it():
    app = LoradeckApp(runs_dir=RUNS)
    async with app.run_test(size=(130, 34)) as pilot:
        await pilot.pause(0.2)
        table = app.screen.query_one("#runs-table", DataTable)
        rows = {row[1]: row for row in cells(table)}
        assert rows["demo-evaluated"][-1] == "format 0%→100% · correct 62%→62% · loss 2.75→0.06"
        assert rows["demo-finished"][-1] == "—", "a run without a report says so"
        await select_run(pilot, app, "demo-evaluated")
        assert "format 0%→100%" in text_of(app, "#report-panel") and "v opens it" in text_of(app, "#report-panel")
        await select_run(pilot, app, "demo-finished")
        assert "no report yet" in text_of(app, "#report-panel")
        await _open_from_home(pilot, app, "demo-evaluated")
        screen = app.screen
        summary = text_of(app, "#eval-summary")
        assert "demo-evaluated: format 0%→100%" in summary and "24 prompts from demo_heldout.jsonl" in summary
        before_after = {row[0]: row for row in cells(screen.query_one("#eval-table", DataTable))}
        assert before_after["held-out loss"][1:3] == ["2.750", "0.062"] and before_after["held-out loss"][-1] == "better"
        assert before_after["format conformance"][1:3] == ["0%", "100%"]
        assert before_after["correct answer found"][-1] == "no clear difference", "the honest verdict is on screen"
        assert "format conformance" in text_of(app, "#eval-bars") and "█" in text_of(app, "#eval-bars")
        assert "No blind ratings" in text_of(app, "#eval-blind") and "not how good" in text_of(app, "#eval-blind")
        assert not screen.query_one("#eval-progress", ProgressBar).display

        screen.query_one(TabbedContent).active = "tab-checkpoints"
        await pilot.pause(0.1)
        steps = [row[0] for row in cells(screen.query_one("#eval-checkpoints", DataTable))]
        assert steps == ["25", "50", "75", "96"]

        screen.query_one(TabbedContent).active = "tab-answers"
        prompts = screen.query_one("#eval-prompts", DataTable)
        await pilot.pause(0.1)
        assert prompts.row_count == 24 and cells(prompts)[0][2:] == ["✓ ✗", "✓ ✓"]
        prompts.focus()
        await pilot.press("down")
        second = screen.answers[1]
        assert second["answers"]["base"]["text"].split()[0] in text_of(app, "#eval-answer-base")
        assert second["answers"]["demo-evaluated"]["text"].splitlines()[0] in text_of(app, "#eval-answer-adapter")
        assert "reference" in text_of(app, "#eval-question"), "base and adapter side by side under the prompt"
        await pilot.press("d")
        await pilot.pause(0.1)
        assert app.screen.__class__.__name__ == "DiffScreen"
        await pilot.press("escape", "escape")
        await pilot.pause(0.1)
        assert app.screen.__class__.__name__ == "HomeScreen"


async def test_monitor_of_a_finished_run_opens_its_report():
    app = LoradeckApp(runs_dir=RUNS, attach_to=RUNS / "demo-evaluated")
    async with app.run_test(size=(110, 34)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("v")
        await wait_until(pilot, lambda: isinstance(app.screen, EvalScreen))
        assert app.screen.report is not None


async def test_a_new_report_from_the_screen_runs_the_real_command_with_progress(chatty_model_dir, tmp_path):
    from engine.train.run import run_training
    from tests.conftest import tiny_config

    run_dir = tmp_path / "runs" / "tuned"
    assert run_training(run_dir, tiny_config(chatty_model_dir, "eval.limit=3", "eval.max_new_tokens=6")) == 0
    app = LoradeckApp(runs_dir=run_dir.parent)
    async with app.run_test(size=(110, 34)) as pilot:
        await _open_from_home(pilot, app, "tuned")
        assert "No report for tuned yet" in text_of(app, "#eval-summary")
        await pilot.press("r")
        bar = app.screen.query_one("#eval-progress", ProgressBar)
        assert bar.display and "writing a report" in text_of(app, "#eval-summary")
        await wait_until(pilot, lambda: app.screen.report is not None, timeout=240)
        assert not bar.display
        assert app.screen.report["prompts"] == 3 and (run_dir / "eval").is_dir()
        rows = {row[0] for row in cells(app.screen.query_one("#eval-table", DataTable))}
        assert {"held-out loss", "format conformance", "ROUGE-L"} <= rows
