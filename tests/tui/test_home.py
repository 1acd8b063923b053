from pathlib import Path

from textual.widgets import DataTable, Static

from tests.conftest import SAMPLE_DATA
from tui.app import LoradeckApp


async def test_home_shows_empty_runs_hint_and_the_configured_model(tmp_path):
    app = LoradeckApp(runs_dir=tmp_path / "runs", config_path=str(SAMPLE_DATA / "configs" / "demo.toml"))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        empty = app.screen.query_one("#runs-empty", Static)
        assert empty.display and "loradeck train" in str(empty.render())
        setup = str(app.screen.query_one("#setup-panel", Static).render())
        assert "smollm2-135m-instruct" in setup and "demo_train.jsonl" in setup
        await pilot.press("q")
    assert app.return_code == 0


async def test_home_shows_a_config_error_instead_of_crashing(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[lora]\nrank = 4\n")
    app = LoradeckApp(runs_dir=tmp_path, config_path=str(bad))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        setup = str(app.screen.query_one("#setup-panel", Static).render())
        assert "config error" in setup and "did you mean 'r'" in setup


def write_run(runs_dir: Path, name: str, events: list[dict]) -> Path:
    import json

    run_dir = runs_dir / name
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text("".join(json.dumps({"v": 1, **e}) + "\n" for e in events))
    return run_dir


async def test_home_lists_runs_with_status_step_and_losses(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "finished-run", [
        {"ts": 100.0, "type": "started", "model": "smollm2-135m-instruct", "max_steps": 10},
        {"ts": 101.0, "type": "step", "step": 10, "loss": 0.5},
        {"ts": 102.0, "type": "eval", "step": 10, "eval_loss": 0.75},
        {"ts": 103.0, "type": "finished", "reason": "completed", "step": 10}])
    write_run(runs, "killed-run", [{"ts": 200.0, "type": "started", "model": "m"},
                                   {"ts": 201.0, "type": "step", "step": 3, "loss": 2.0}])
    app = LoradeckApp(runs_dir=runs)
    async with app.run_test(size=(110, 30)) as pilot:
        await pilot.pause()
        table = app.screen.query_one("#runs-table", DataTable)
        rows = {table.get_row_at(i)[1]: [str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)}
        assert rows["finished-run"][2:6] == ["finished", "10/10", "0.5", "0.75"]
        assert rows["killed-run"][2] == "lost"
        assert not app.screen.query_one("#runs-empty", Static).display
