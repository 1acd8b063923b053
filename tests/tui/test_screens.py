"""Home navigation, the new-run form and the compare screen, through Textual's pilot."""

import os
import time
from pathlib import Path

from textual.widgets import DataTable, Input, Static, Switch

from engine.config import load_config
from tests.conftest import SAMPLE_DATA
from tui.app import LoradeckApp
from tui.screens.compare import CompareScreen, config_differences
from tui.screens.monitor import MonitorScreen
from tui.screens.new_run import NewRunScreen

RUNS = SAMPLE_DATA / "runs"
DEMO = str(SAMPLE_DATA / "configs" / "demo.toml")


async def test_home_opens_a_run_and_compares_marked_runs():
    app = LoradeckApp(runs_dir=RUNS)
    async with app.run_test(size=(110, 30)) as pilot:
        await pilot.pause(0.2)
        table = app.screen.query_one("#runs-table", DataTable)
        assert table.row_count >= 2
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert isinstance(app.screen, MonitorScreen)
        await pilot.press("escape")
        await pilot.press("c")
        assert not isinstance(app.screen, CompareScreen)  # nothing marked yet: a hint instead
        await pilot.press("space", "down", "space")
        marks = [str(table.get_row_at(i)[0]) for i in range(2)]
        assert marks == ["●", "●"]
        await pilot.press("c")
        await pilot.pause(0.2)
        assert isinstance(app.screen, CompareScreen)
        diff = app.screen.query_one("#config-diff", DataTable)
        keys = [str(diff.get_row_at(i)[0]) for i in range(diff.row_count)]
        assert "session.budget" in keys
        assert all(len(h.loss) > 0 for h in app.screen.histories)


def test_config_differences_list_only_keys_that_differ(tmp_path):
    for name, r in (("a", 8), ("b", 16)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.toml").write_text(f"[lora]\nr = {r}\nalpha = 32\n")
    assert config_differences([tmp_path / "a", tmp_path / "b"]) == [("lora.r", [8, 16])]


async def test_new_run_form_validates_like_the_cli_and_saves_toml(tmp_path):
    app = LoradeckApp(runs_dir=tmp_path / "runs", config_path=DEMO)
    async with app.run_test(size=(110, 40)) as pilot:
        await pilot.press("n")
        await pilot.pause(0.2)
        screen = app.screen
        assert isinstance(screen, NewRunScreen)
        lr = screen.query_one("#field-train-learning_rate", Input)
        lr.value = "fast"
        await pilot.pause(0.1)
        error = str(screen.query_one("#field-train-learning_rate-error", Static).render())
        assert "expected a number, got 'fast'" in error and "train.learning_rate" not in error, \
            "the message under the field does not repeat its key"
        status = str(screen.query_one("#form-status", Static).render())
        assert "fix" in status and "learning rate: expected a number" in status, "the summary names the field"
        adapter = screen.query_one("#field-model-adapter", Input)
        adapter.value = str(tmp_path / "nowhere")
        await pilot.pause(0.1)
        assert "no such folder" in str(screen.query_one("#field-model-adapter-error", Static).render())
        (tmp_path / "sft-adapter").mkdir()
        (tmp_path / "sft-adapter" / "adapter_config.json").write_text("{}")
        adapter.value = str(tmp_path / "sft-adapter")
        from textual.widgets import Select

        screen.query_one("#field-train-method", Select).value = "dpo"
        lr.value = "1e-4"
        screen.query_one("#field-lora-r", Input).value = "8"
        screen.query_one("#field-model-load_in_4bit", Switch).value = True
        checkpointing = screen.query_one("#field-train-gradient_checkpointing", Select)
        assert checkpointing.value == "auto" and [label for label, _ in checkpointing._options] == ["auto", "on", "off"]
        checkpointing.value = True
        screen.query_one("#field-session-budget", Input).value = "2h"
        target = tmp_path / "mine.toml"
        screen.query_one("#save-path", Input).value = str(target)
        await pilot.pause(0.1)
        assert "valid" in str(screen.query_one("#form-status", Static).render())
        await pilot.press("ctrl+s")
        saved = load_config(target)
        assert (saved.train.learning_rate, saved.lora.r, saved.model.load_in_4bit, saved.session.budget) == \
            (1e-4, 8, True, "2h")
        assert saved.train.method == "dpo" and saved.model.adapter == str(tmp_path / "sft-adapter")
        assert saved.train.gradient_checkpointing is True
        assert saved.data.path.endswith("demo_train.jsonl")
        import tomllib

        written = tomllib.loads(target.read_text())["data"]
        assert not Path(written["path"]).is_absolute() and not Path(written["eval_path"]).is_absolute(), \
            "file paths are written relative to the saved file's folder"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    here = os.getcwd()
    os.chdir(elsewhere)  # a config saved from the form loads from any working directory
    try:
        again = load_config(target)
    finally:
        os.chdir(here)
    assert Path(again.data.path).is_file() and Path(again.data.eval_path).is_file()


async def test_the_form_starts_from_the_config_it_last_saved_and_ctrl_r_resets_it(tmp_path):
    app = LoradeckApp(runs_dir=tmp_path / "runs", config_path=DEMO)
    async with app.run_test(size=(110, 40)) as pilot:
        await pilot.press("n")
        await pilot.pause(0.2)
        assert "from " in app.screen.query_one("#new-run-form").border_title, "nothing remembered yet"
        app.screen.query_one("#field-lora-r", Input).value = "4"
        app.screen.query_one("#field-train-learning_rate", Input).value = "3e-4"
        app.screen.query_one("#save-path", Input).value = str(tmp_path / "mine.toml")
        await pilot.pause(0.1)
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
    again = LoradeckApp(runs_dir=tmp_path / "runs", config_path=DEMO)  # the next launch
    async with again.run_test(size=(110, 40)) as pilot:
        await pilot.press("n")
        await pilot.pause(0.2)
        screen = again.screen
        assert "your last form" in screen.query_one("#new-run-form").border_title
        assert screen.query_one("#field-lora-r", Input).value == "4"
        assert screen.query_one("#field-train-learning_rate", Input).value == "0.0003"
        assert screen.query_one("#field-data-path", Input).value.endswith("demo_train.jsonl")
        assert "valid" in str(screen.query_one("#form-status", Static).render()), "its data paths still resolve"
        await pilot.press("ctrl+r")
        await pilot.pause(0.1)
        demo = load_config(DEMO)
        assert screen.query_one("#field-lora-r", Input).value == str(demo.lora.r)
        assert "from " in screen.query_one("#new-run-form").border_title
    from tui.settings import last_form_config_file

    last_form_config_file().write_text("[lora]\nr = 'many'\n")  # a damaged file is ignored
    third = LoradeckApp(runs_dir=tmp_path / "runs", config_path=DEMO)
    async with third.run_test(size=(110, 40)) as pilot:
        await pilot.press("n")
        await pilot.pause(0.2)
        assert third.screen.query_one("#field-lora-r", Input).value == str(load_config(DEMO).lora.r)


async def test_starting_a_run_whose_model_folder_is_gone_says_so_and_makes_no_run(tmp_path):
    from tests.tui.pilot_helpers import wait_until

    runs = tmp_path / "runs"
    app = LoradeckApp(runs_dir=runs, config_path=DEMO)
    async with app.run_test(size=(110, 40)) as pilot:
        await pilot.press("n")
        await pilot.pause(0.2)
        app.screen.query_one("#field-model-name", Input).value = str(tmp_path / "moved-away")
        app.screen.query_one("#save-path", Input).value = str(tmp_path / "tiny.toml")
        await pilot.pause(0.1)
        await pilot.press("f5")
        await wait_until(pilot, lambda: any("moved-away': no such folder" in n.message
                                            for n in app._notifications), timeout=10)
        assert isinstance(app.screen, NewRunScreen), "the form stays, its values intact"
        assert app.screen.query_one("#field-model-name", Input).value.endswith("moved-away")
    assert not runs.exists() or not any(runs.iterdir())


async def test_new_run_preflight_then_start_opens_the_monitor_on_a_live_run(tiny_model_dir, tmp_path):
    from engine.run.control import send_command
    from engine.run.status import trainer_pid

    runs = tmp_path / "runs"
    app = LoradeckApp(runs_dir=runs, config_path=DEMO)
    try:
        async with app.run_test(size=(110, 40)) as pilot:
            await pilot.press("n")
            await pilot.pause(0.2)
            screen = app.screen
            screen.query_one("#field-model-name", Input).value = str(tiny_model_dir)
            screen.query_one("#field-train-max_steps", Input).value = "100000"
            screen.query_one("#save-path", Input).value = str(tmp_path / "tiny.toml")
            screen.query_one("#run-name", Input).value = "first-try"
            await pilot.pause(0.1)
            await pilot.press("f2")
            seen = []
            for _ in range(300):
                await pilot.pause(0.1)
                verdict = str(screen.query_one("#preflight-panel", Static).render())
                seen.append(verdict)
                if "(measured)" in verdict:
                    break
            assert "FITS" in verdict and "GB (measured)" in verdict and "(measured)" in verdict, verdict
            assert "estimate" in verdict and "GB: weights" in verdict, "the estimate stays beside the measurement"
            await pilot.press("f5")
            for _ in range(200):
                await pilot.pause(0.1)
                if isinstance(app.screen, MonitorScreen):
                    break
            assert isinstance(app.screen, MonitorScreen)
            await pilot.pause(0.5)
            history = app.screen.history
            assert history.paths.root.parent == runs and history.paths.root.name.endswith("-first-try")
        deadline = time.time() + 60
        while not history.loss.steps and time.time() < deadline:
            history.poll()
            time.sleep(0.2)
        assert history.loss.steps, "the detached trainer started training (and quitting the TUI left it running)"
    finally:
        # Whatever happened above, no trainer outlives the test.
        for run_dir in runs.glob("*") if runs.is_dir() else []:
            if trainer_pid(run_dir):
                send_command(run_dir, "stop")
                deadline = time.time() + 60
                while trainer_pid(run_dir) and time.time() < deadline:
                    time.sleep(0.2)


async def test_starting_a_run_where_no_run_directory_can_be_made_is_a_notice_not_a_crash(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs folder should be")
    app = LoradeckApp(runs_dir=blocker / "runs", config_path=DEMO)
    async with app.run_test(size=(110, 40)) as pilot:
        await pilot.press("n")
        await pilot.pause(0.2)
        await pilot.press("f5")
        for _ in range(50):
            await pilot.pause(0.1)
            messages = [n.message for n in app._notifications]
            if any("cannot create the run directory" in m for m in messages):
                break
        assert any("cannot create the run directory" in m and "--runs-dir" in m for m in messages), messages
        assert isinstance(app.screen, NewRunScreen), "the form stays open to fix and retry"


def test_run_labels_keep_the_name_drop_the_stamp_and_stay_distinct():
    from tui.format import run_labels

    assert run_labels(["20261124-233012-my-run", "20261125-101500-other"]) == ["my-run", "other"]
    assert run_labels(["20261124-233012-demo", "20261125-101500-demo"]) == ["233012-demo", "101500-demo"]
    long_name = "20261124-233012-qwen2-7b-instruct-lora-r64-alpaca-cleaned"
    label = run_labels([long_name], 20)[0]
    assert len(label) == 20 and label.startswith("qwen2-7b") and label.endswith("cleaned") and "…" in label


async def test_the_theme_chosen_last_time_comes_back_and_a_bad_settings_file_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    app = LoradeckApp(runs_dir=tmp_path / "runs")
    async with app.run_test() as pilot:
        assert app.theme == "loradeck-dark"
        app.theme = "loradeck-light"
        await pilot.pause(0.1)
    again = LoradeckApp(runs_dir=tmp_path / "runs")
    assert again.theme == "loradeck-light", "remembered between launches"
    (tmp_path / "config" / "loradeck" / "tui.json").write_text('{"theme": "no-such-theme"}')
    assert LoradeckApp(runs_dir=tmp_path / "runs").theme == "loradeck-dark"
    (tmp_path / "config" / "loradeck" / "tui.json").write_text("[not json")
    assert LoradeckApp(runs_dir=tmp_path / "runs").theme == "loradeck-dark"


def test_step_axes_tick_whole_numbers():
    from tui.format import integer_ticks

    assert integer_ticks(1, 96) == [1, 25, 49, 73, 96]
    assert integer_ticks(1, 3) == [1, 2, 3]
    assert integer_ticks(5, 5) == [5]
    assert all(isinstance(t, int) for t in integer_ticks(1.0, 24.0))
