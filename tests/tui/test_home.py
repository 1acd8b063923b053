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
