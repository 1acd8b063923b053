"""The Export screen as a person uses it: opened from Home on a run with an adapter (refused without one), the
choices turned into the real `loradeck export` command, its stages streaming in, and the files and checks at
the end."""

from __future__ import annotations

import json

from textual.widgets import Checkbox, Input, Static

from tests.conftest import SAMPLE_DATA
from tests.tui.pilot_helpers import select_run, wait_until
from tui.app import LoradeckApp
from tui.screens.export import ExportScreen

RUNS = SAMPLE_DATA / "runs"


async def test_a_run_without_an_adapter_is_not_exported():
    app = LoradeckApp(runs_dir=RUNS)
    async with app.run_test(size=(120, 34)) as pilot:
        await select_run(pilot, app, "demo-finished")
        await pilot.press("x")
        await wait_until(pilot, lambda: any("has no adapter yet" in n.message for n in app._notifications), 5)
        assert not isinstance(app.screen, ExportScreen)


async def test_export_from_home_streams_stages_and_shows_the_checks(small_run, tmp_path):
    out = tmp_path / "exported"
    app = LoradeckApp(runs_dir=small_run.parent)
    async with app.run_test(size=(120, 40)) as pilot:
        await select_run(pilot, app, small_run.name)
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ExportScreen))
        screen = app.screen
        screen.query_one("#export-out", Input).value = str(out)
        screen.query_one("#gguf-q8_0", Checkbox).value = False  # f16 alone keeps the test short
        command = screen.export_command()
        assert command[command.index("--out") + 1] == str(out)
        assert [command[i + 1] for i, word in enumerate(command) if word == "--gguf"] == ["f16"]
        assert command[command.index("--ollama") + 1] == "small"
        seen_stages = set()
        await pilot.press("ctrl+e")
        await wait_until(pilot, lambda: seen_stages.add(screen.stage) or screen.result is not None or
                         "failed" in str(screen.query_one("#export-stage", Static).render()), timeout=300)
        assert screen.result is not None, str(screen.query_one("#export-stage", Static).render())
        assert {"✓ merge", "✓ check merged", "✓ gguf f16", "✓ check f16"} <= set(screen.stage_lines), \
            "every stage went through the screen"
        assert "merge" in seen_stages
        shown = str(screen.query_one("#export-result", Static).render())
        assert "every check passed" in str(screen.query_one("#export-stage", Static).render())
        assert "small-f16.gguf" in shown and "[ok] small-f16.gguf loaded back by transformers" in shown
        assert "ollama create small -f" in shown
    assert json.loads((out / "export.json").read_text())["passed"]
