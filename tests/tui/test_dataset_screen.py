"""The Dataset screen: inspection in a worker, findings that jump to rows, the mask made visible."""

import json

from textual.widgets import DataTable, Static

from tests.conftest import SAMPLE_DATA
from tui.app import LoradeckApp
from tui.screens.dataset import DatasetScreen


async def wait_for_report(pilot, screen, seconds=120):
    for _ in range(int(seconds * 10)):
        await pilot.pause(0.1)
        if screen.report is not None:
            return screen.report
    raise AssertionError("inspection never finished")


async def test_home_d_inspects_the_configured_dataset_and_shows_the_trained_tokens(default_model_dir, tmp_path):
    app = LoradeckApp(runs_dir=tmp_path / "runs", config_path=str(SAMPLE_DATA / "configs" / "demo.toml"))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("d")
        screen = app.screen
        assert isinstance(screen, DatasetScreen)
        report = await wait_for_report(pilot, screen)
        assert report.format == "alpaca" and report.rows == 125
        summary = str(screen.query_one("#dataset-summary", Static).render())
        assert "alpaca" in summary and "125 train / 24 held out" in summary, "held out as training does: eval_path"
        await pilot.pause(0.3)
        drawn = screen.query_one("#dataset-histogram").render().plain.splitlines()
        counts = [line.split("┤")[0].strip() for line in drawn if "┤" in line]
        assert counts and all(c.isdigit() for c in counts), f"rows are counted in whole numbers: {counts}"
        assert int(counts[0]) == max(c for _, _, c in report.histogram(bins=16)), "the top tick is the tallest bar"
        sample = screen.sample_rich  # the Text the sample panel displays
        success = app.theme_variables["success"]
        trained = "".join(sample.plain[s.start:s.end] for s in sample.spans if success in str(s.style))
        first = json.loads((SAMPLE_DATA / "demo_train.jsonl").read_text().splitlines()[0])
        assert trained.startswith(first["output"]) and trained.endswith("<|im_end|>\n")
        await pilot.press("]")
        assert screen.index == 1 and "record 2 of 125" in screen.query_one("#dataset-sample").border_title


async def test_findings_jump_to_their_rows_and_bad_files_are_one_line(default_model_dir, tmp_path):
    rows = [{"instruction": f"Question {i}?", "output": f"Answer number {i}."} for i in range(6)]
    rows.append({"instruction": "Who are you?", "output": "I am {{name}}."})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    app = LoradeckApp(runs_dir=tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(DatasetScreen(str(data)))
        await pilot.pause(0.1)
        screen = app.screen
        report = await wait_for_report(pilot, screen)
        table = screen.query_one("#dataset-findings", DataTable)
        titles = [str(table.get_row_at(i)[2]) for i in range(table.row_count)]
        assert any("placeholders" in t for t in titles)
        table.focus()
        table.move_cursor(row=titles.index(next(t for t in titles if "placeholders" in t)))
        await pilot.press("enter")
        assert "record 7 of 7" in screen.query_one("#dataset-sample").border_title
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"instruction": \n')
        screen.report = None
        screen.start(str(bad))
        for _ in range(100):
            await pilot.pause(0.1)
            if "invalid JSON" in str(screen.query_one("#dataset-summary", Static).render()):
                break
        assert "bad.jsonl:1: invalid JSON" in str(screen.query_one("#dataset-summary", Static).render())
        assert report.rows == 7


async def test_max_length_on_the_screen_reinspects_with_the_new_cut(default_model_dir, tmp_path):
    from textual.widgets import Input

    app = LoradeckApp(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = DatasetScreen(str(SAMPLE_DATA / "demo_train.jsonl"), "smollm2-135m-instruct", 1024)
        app.push_screen(screen)
        first = await wait_for_report(pilot, screen)
        assert first.max_length == 1024 and not first.truncated_rows
        field = screen.query_one("#dataset-max-length", Input)
        field.value = "48"
        screen.report = None
        await field.action_submit()
        report = await wait_for_report(pilot, screen)
        assert report.max_length == 48 and report.truncated_rows, "the new cut truncates the longer rows"
