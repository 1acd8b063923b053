"""The monitor, driven by recorded event streams and live-appended events, through Textual's pilot."""

import json
import os
import shutil
import time
from pathlib import Path

from textual.widgets import RichLog, Static

from engine.run.telemetry import collect_telemetry, set_backend_factory
from tests.conftest import SAMPLE_DATA
from tests.fakes import FakeT4Backend
from tests.tui.pilot_helpers import wait_until
from tui.app import LoradeckApp
from tui.screens.monitor import MonitorScreen

RUNS = SAMPLE_DATA / "runs"


def text_of(app, selector) -> str:
    return str(app.screen.query_one(selector, Static).render())


def append(run_dir: Path, *events):
    with open(run_dir / "events.jsonl", "a") as handle:
        for event in events:
            handle.write(json.dumps({"v": 1, "ts": time.time(), **event}) + "\n")


def live_run(tmp_path, name="live") -> Path:
    """A run directory whose 'trainer' is this test process (alive), so controls are accepted."""
    run_dir = tmp_path / "runs" / name
    (run_dir / "control").mkdir(parents=True)
    os.chmod(run_dir / "control", 0o700)
    (run_dir / "trainer.pid").write_text(str(os.getpid()))
    append(run_dir, {"type": "started", "model": "smollm2-135m-instruct", "pid": os.getpid(), "host": "test"},
           {"type": "model_loaded", "backend": "transformers", "device": "cpu", "max_steps": 100, "train_rows": 50,
            "data_format": "alpaca"})
    return run_dir


async def test_attach_replays_a_finished_run_with_its_full_history():
    app = LoradeckApp(runs_dir=RUNS, attach_to=RUNS / "demo-finished")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        assert isinstance(app.screen, MonitorScreen)
        history = app.screen.history
        assert len(history.loss) == 96 and history.summary.status == "finished"
        assert "step 96/96" in text_of(app, "#progress-line") and "finished" in text_of(app, "#progress-line")
        assert "eval" in text_of(app, "#metrics-line")
        assert "No session clock" in text_of(app, "#session-panel")
        assert "no GPU: host figures" in text_of(app, "#device-text")
        log = app.screen.query_one("#event-log", RichLog)
        assert any("finished" in line.text for line in log.lines)
        await pilot.press("z")
        assert "last 50 steps" in app.screen.query_one("#loss-plot").border_title
        await pilot.press("escape")
        assert app.screen.__class__.__name__ == "HomeScreen"


async def test_deadline_run_shows_the_countdown_state_and_margin():
    app = LoradeckApp(runs_dir=RUNS, attach_to=RUNS / "kaggle-deadline")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        session = app.screen.query_one("#session-panel", Static)
        assert "ended with 7s left" in str(session.render()) and "margin 10s" in str(session.render())
        assert session.has_class("session-red")


async def test_live_events_update_curves_countdown_gpu_and_ring_the_bell(tmp_path):
    run_dir = live_run(tmp_path)
    app = LoradeckApp(runs_dir=run_dir.parent, attach_to=run_dir)
    bells = []
    async with app.run_test(size=(100, 30)) as pilot:
        app.bell = lambda: bells.append(1)
        await pilot.pause(0.2)
        assert "waiting for telemetry" in text_of(app, "#device-text")
        set_backend_factory(FakeT4Backend)
        try:
            telemetry = collect_telemetry()
        finally:
            set_backend_factory(__import__("engine.run.telemetry", fromlist=["NvmlBackend"]).NvmlBackend)
        deadline = time.time() + 20 * 60
        append(run_dir, *({"type": "step", "step": s, "loss": 2.0 - s / 100, "lr": 1e-4, "grad_norm": 0.5,
                           "tokens_per_s": 900.0, "epoch": s / 10, "max_steps": 100} for s in range(1, 21)),
               {"type": "telemetry", "step": 20, **telemetry},
               {"type": "deadline", "step": 20, "deadline_at": deadline, "time_left_s": 1200, "margin_s": 95.0,
                "step_s": 3.0, "save_s": 2.0},
               {"type": "warning", "step": 20, "kind": "deadline", "threshold_s": 1800,
                "message": "20m00s left in the session"})
        await pilot.pause(MonitorScreen.POLL_SECONDS * 2.5)
        assert len(app.screen.history.loss) == 20 and "step 20/100" in text_of(app, "#progress-line")
        assert "ETA" in text_of(app, "#progress-line")
        devices = text_of(app, "#device-text")
        assert "GPU0 Tesla T4" in devices and "GPU1" in devices and "VRAM" in devices
        session = app.screen.query_one("#session-panel", Static)
        assert "left" in str(session.render()) and "margin 1m35s" in str(session.render())
        assert session.has_class("session-amber")
        assert bells == [1], "the deadline warning rings the terminal bell once"
        append(run_dir, {"type": "step", "step": 21, "loss": "nan", "max_steps": 100})
        await pilot.pause(MonitorScreen.POLL_SECONDS * 2.5)
        assert "nan" in text_of(app, "#alerts-panel") and "learning_rate" in text_of(app, "#alerts-panel")


async def test_controls_send_save_stop_and_extend_to_the_run(tmp_path):
    run_dir = live_run(tmp_path)
    append(run_dir, {"type": "deadline", "step": 0, "deadline_at": time.time() + 600, "time_left_s": 600})
    app = LoradeckApp(runs_dir=run_dir.parent, attach_to=run_dir)

    def commands():
        return sorted(json.loads(p.read_text())["command"] for p in (run_dir / "control").glob("*.json"))

    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        await pilot.press("s")
        assert commands() == ["save"]
        await pilot.press("x")
        await pilot.press("n")  # cancelled: nothing sent
        assert commands() == ["save"]
        await pilot.press("x")
        await pilot.press("y")
        assert commands() == ["save", "stop"]
        await pilot.press("e")
        await pilot.press(*"soon", "enter")
        assert "not a duration" in str(app.screen.query_one("#extend-error").render())
        for _ in range(4):
            await pilot.press("backspace")
        await pilot.press(*"45m", "enter")
        extend = [json.loads(p.read_text()) for p in (run_dir / "control").glob("*extend.json")]
        assert extend and extend[0]["seconds"] == 2700


async def test_controls_on_a_finished_run_explain_instead_of_crashing(tmp_path):
    run_dir = tmp_path / "runs" / "done"
    shutil.copytree(RUNS / "demo-finished", run_dir)
    app = LoradeckApp(runs_dir=run_dir.parent, attach_to=run_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        monitor = app.screen
        for key, what in (("s", "save"), ("x", "stop"), ("e", "extend")):
            await pilot.press(key)
            await wait_until(pilot, lambda: any(f"no trainer is running for this run (finished): nothing to {what}"
                                                in n.message for n in app._notifications), timeout=5)
            assert app.screen is monitor, f"{key}: no dialog opens for a command that cannot be sent"


async def test_the_palette_finds_each_screens_actions_with_their_keys():
    from textual.command import CommandPalette

    app = LoradeckApp(runs_dir=RUNS, attach_to=RUNS / "demo-finished")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert {"Save now", "Stop & save", "Extend session", "Zoom", "Eval", "Export", "Back"} <= set(commands)
        assert commands["Zoom"] == "key: z" and "Theme" in commands and "Scroll Up" not in commands
        await pilot.press("ctrl+p")
        await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette), 5)
        await pilot.press(*"zoom")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, CommandPalette), 5)
        assert app.screen.zoom_index == 1, "the palette ran the monitor's zoom"


def test_probe_answers_show_beside_the_curve_with_the_starting_answer(tmp_path):
    import asyncio

    run_dir = live_run(tmp_path)
    append(run_dir, {"type": "sample", "step": 0, "samples": [{"prompt": "Capital of Peru?", "answer": "Peru is big."}]})

    async def scenario():
        app = LoradeckApp(tmp_path / "runs", attach_to=run_dir)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.3)
            panel = app.screen.query_one("#probe-panel", Static)
            assert panel.display and "Peru is big." in text_of(app, "#probe-panel")
            append(run_dir, {"type": "sample", "step": 20,
                             "samples": [{"prompt": "Capital of Peru?", "answer": "ANSWER: Lima"}]})
            await pilot.pause(1.0)
            text = text_of(app, "#probe-panel")
            assert "ANSWER: Lima" in text and "step 0: Peru is big." in text
            assert panel.border_title == "probes · step 20"
    asyncio.run(scenario())


def test_probe_panel_is_hidden_for_runs_without_probes(tmp_path):
    import asyncio

    run_dir = live_run(tmp_path)

    async def scenario():
        app = LoradeckApp(tmp_path / "runs", attach_to=run_dir)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.3)
            assert not app.screen.query_one("#probe-panel", Static).display
    asyncio.run(scenario())


async def test_a_long_log_loads_in_slices_showing_loading_never_a_wrong_status(tmp_path, monkeypatch):
    from tests.engine.run.test_large_log import write_long_run

    monkeypatch.setattr(MonitorScreen, "LOADING_SLICE_SECONDS", 0.0)  # one 4 MB read per tick: a slow disk
    monkeypatch.setattr(MonitorScreen, "POLL_SECONDS", 1.0)  # no tick before the first look, however busy the CPU
    paths = write_long_run(tmp_path / "runs" / "long", 30000)
    assert paths.events.stat().st_size > 8 << 20
    paths.summary.unlink()  # an older run: no snapshot, so the monitor must read the whole log
    app = LoradeckApp(runs_dir=paths.root.parent, attach_to=paths.root)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.05)
        first = text_of(app, "#progress-line")
        assert "loading" in first and "MB left" in first, first
        assert "lost" not in first and "running" not in first
        for _ in range(200):
            await pilot.pause(0.1)
            line = text_of(app, "#progress-line")
            assert "lost" not in line and "running" not in line, line  # also on the last slice before the end
            if "finished" in line:
                break
        assert "finished" in text_of(app, "#progress-line") and "30000/30000" in text_of(app, "#progress-line")
        assert app.screen.history.loss.steps[-1] == 30000


async def test_an_eval_report_event_is_logged_with_its_headline_and_v_opens_it(tmp_path):
    from tui.screens.evaluation import EvalScreen

    run_dir = tmp_path / "demo-evaluated"
    shutil.copytree(RUNS / "demo-evaluated", run_dir)
    folder = next((run_dir / "eval").iterdir())
    with open(run_dir / "events.jsonl", "a") as events:
        events.write(json.dumps({"v": 1, "ts": time.time(), "type": "eval_report", "step": 96, "folder": str(folder),
                                 "headline": "demo-evaluated: format 0%→100% · loss 2.75→0.06", "prompts": 24}) + "\n")
    app = LoradeckApp(runs_dir=tmp_path, attach_to=run_dir)
    async with app.run_test(size=(110, 34)) as pilot:
        await pilot.pause(0.3)
        log = app.screen.query_one("#event-log", RichLog)
        logged = " ".join(" ".join(line.text.split()) for line in log.lines)  # long lines wrap in the panel
        assert "eval demo-evaluated: format 0%→100%" in logged and "(v: the report)" in logged
        await pilot.press("v")
        await pilot.pause(0.2)
        assert isinstance(app.screen, EvalScreen) and app.screen.report["folder"] == str(folder)


async def test_a_resumed_run_draws_the_losses_that_travelled_in_its_bundle(tmp_path):
    run_dir = tmp_path / "runs" / "resumed"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text("[model]\nname = \"tiny\"\n")
    now = time.time()
    events = [{"type": "started", "pid": 1, "max_steps": 30},
              {"type": "resumed", "step": 20, "loss_tail": [[s, 3.0 - s * 0.1] for s in range(1, 21)]},
              *({"type": "step", "step": s, "loss": 1.0 - s * 0.01, "lr": 1e-4} for s in range(21, 31)),
              {"type": "finished", "reason": "completed", "step": 30}]
    (run_dir / "events.jsonl").write_text("".join(json.dumps({"v": 1, "ts": now, **e}) + "\n" for e in events))
    app = LoradeckApp(runs_dir=run_dir.parent, attach_to=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.5)
        screen = app.export_screenshot().replace("&#160;", " ")
        assert "before resume" in screen and "train" in screen, "the earlier losses are on the curve, dimmed"


async def test_the_memory_graphs_are_labelled_and_the_second_steps_aside_at_80x24(tmp_path):
    run_dir = live_run(tmp_path)
    gib = 1024 ** 3
    append(run_dir, *({"type": "telemetry", "step": s,
                       "devices": [{"index": 0, "name": "Tesla T4", "memory_used": (8 + s) * gib,
                                    "memory_total": 16 * gib}],
                       "process": {"allocated": (5 + s) * gib, "reserved": 12 * gib, "peak_allocated": 7 * gib},
                       "host": {"ram_used": 3 * gib, "ram_total": 25 * gib, "cpu_pct": 99.6, "process_rss": gib}}
                      for s in (1, 2, 3)))
    app = LoradeckApp(runs_dir=run_dir.parent, attach_to=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: "VRAM" in text_of(app, "#memory-label-1"))
        assert text_of(app, "#memory-label-1") == "GPU0 VRAM 11.8 GB max 11.8 GB"
        assert text_of(app, "#memory-label-2") == "this run 8.6 GB max 8.6 GB", "own-process allocated memory"
        assert list(app.screen.query_one("#memory-history-1").data) == [9 * gib, 10 * gib, 11 * gib]
        assert "VRAM 11.8/17.2 GB" in text_of(app, "#device-text")
        assert app.screen.query_one("#memory-history-2").display
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.2)
        assert not app.screen.query_one("#memory-history-2").display, "80x24: the device graph only"
        assert app.screen.query_one("#memory-label-1").display


async def test_without_a_gpu_the_graphs_are_host_ram_and_the_trainer_rss():
    app = LoradeckApp(runs_dir=RUNS, attach_to=RUNS / "demo-finished")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: "RAM" in text_of(app, "#memory-label-1"))
        assert text_of(app, "#memory-label-1").startswith("host RAM ")
        assert text_of(app, "#memory-label-2").startswith("trainer RSS ")
        assert "trainer RSS" not in text_of(app, "#device-text"), "said once, by the graph's label"


async def test_notifications_stack_above_the_event_log_not_over_its_newest_lines():
    from textual.widgets._toast import Toast

    for size in ((120, 40), (80, 24)):
        app = LoradeckApp(runs_dir=RUNS, attach_to=RUNS / "demo-finished")
        async with app.run_test(size=size, notifications=True) as pilot:
            await pilot.pause(0.3)
            await pilot.press("s")  # a finished run: the notice says why nothing is saved
            await wait_until(pilot, lambda: bool(app.screen.query(Toast)))
            await pilot.pause(0.3)
            log = app.screen.query_one("#event-log").region
            for toast in app.screen.query(Toast):
                assert toast.region.bottom <= log.y, f"{size}: the toast {toast.region} covers the log {log}"


async def test_a_dpo_run_plots_its_reward_margin_and_accuracy_beside_the_loss(tmp_path):
    run_dir = live_run(tmp_path, "dpo")
    append(run_dir, {"type": "model_loaded", "backend": "transformers", "device": "cpu", "max_steps": 10,
                     "train_rows": 40, "data_format": "preference", "method": "dpo"},
           *({"type": "step", "step": s, "loss": 0.69 - s / 40, "lr": 5e-5, "max_steps": 10,
              "reward_margin": s / 10, "preference_accuracy": min(1.0, 0.5 + s / 10)} for s in range(1, 7)))
    app = LoradeckApp(runs_dir=run_dir.parent, attach_to=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: len(app.screen.history.reward_margin) == 6)
        await pilot.pause(MonitorScreen.PLOT_EVERY_SECONDS + 0.3)
        assert "margin 0.6" in text_of(app, "#metrics-line") and "acc 100%" in text_of(app, "#metrics-line")
        plot = app.screen.query_one("#loss-plot")
        assert plot.border_title.startswith("DPO loss, reward margin, accuracy")
        drawn = plot.render().plain
        assert "reward margin" in drawn and "preference accuracy" in drawn, "both curves are in the legend"
        assert app.screen.history.summary.method == "dpo"
        await pilot.press("escape")  # Home names the method beside the model
        await pilot.pause(0.3)
        table = app.screen.query_one("#runs-table")
        assert str(table.get_row_at(0)[7]).endswith("· DPO")


async def test_a_two_process_fsdp_run_shows_both_gpus_and_every_ranks_share(tmp_path):
    run_dir = tmp_path / "runs" / "two"
    run_dir.mkdir(parents=True)
    gib = 1024 ** 3
    set_backend_factory(FakeT4Backend)  # two T4s, as on Kaggle
    try:
        telemetry = collect_telemetry([
            {"rank": rank, "device": rank, "allocated": (3 + rank) * gib, "peak_allocated": (5 + rank) * gib,
             "rss": gib, "weights": 2 * gib} for rank in (0, 1)])
    finally:
        set_backend_factory(__import__("engine.run.telemetry", fromlist=["NvmlBackend"]).NvmlBackend)
    append(run_dir, {"type": "started", "model": "llama-8b", "pid": 1, "host": "kaggle", "world_size": 2},
           {"type": "model_loaded", "backend": "transformers", "device": "cuda", "max_steps": 100,
            "strategy": "fsdp", "world_size": 2},
           {"type": "step", "step": 1, "loss": 2.0, "max_steps": 100, "world_size": 2},
           {"type": "telemetry", "step": 1, **telemetry, "world_size": 2})
    app = LoradeckApp(runs_dir=run_dir.parent, attach_to=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: "rank 1" in text_of(app, "#device-text"))
        devices = text_of(app, "#device-text")
        assert "GPU0 Tesla T4" in devices and "GPU1 Tesla T4" in devices
        assert "rank 0 GPU0: alloc 3.2 GB peak 5.4 GB wts 2.1 GB" in devices
        assert "rank 1 GPU1: alloc 4.3 GB peak 6.4 GB wts 2.1 GB" in devices
        assert "2 processes (FSDP)" in text_of(app, "#progress-line")


def test_the_loaded_line_says_when_batches_are_packed_and_checkpointing_is_on():
    from tui.screens.monitor import log_line

    base = {"type": "model_loaded", "ts": 0, "backend": "transformers", "device": "cuda", "data_format": "alpaca",
            "train_rows": 900, "max_steps": 200}
    assert log_line(base, {}).plain.endswith("transformers on cuda, alpaca data, 900 rows, 200 steps")
    auto = {**base, "packing": True, "gradient_checkpointing": True,
            "checkpointing_reason": "auto: on — a step needs ~18.2 GB without it, of 15.8 GB available on cuda"}
    assert log_line(auto, {}).plain.endswith("200 steps, packed, checkpointing (auto)")
    chosen = {**base, "gradient_checkpointing": True, "checkpointing_reason": "train.gradient_checkpointing = true"}
    assert log_line(chosen, {}).plain.endswith("200 steps, checkpointing")
