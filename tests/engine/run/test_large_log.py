"""A long run's log: status reads the trainer's snapshot plus the tail, and a half-read log never shows a wrong
status."""

import json
import os
import time

from engine.run.events import EventTail, EventWriter
from engine.run.history import RunHistory
from engine.run.paths import RunPaths
from engine.run.status import SummaryKeeper, fold_log, load_snapshot, summarize_run


def write_long_run(run_dir, steps, *, finish=True):
    """A run written through the trainer's own writer and snapshot keeper."""
    paths = RunPaths(run_dir)
    run_dir.mkdir(parents=True)
    paths.config.write_text("[model]\nname = 'tiny'\n")
    keeper = SummaryKeeper(paths)
    events = EventWriter(paths.events, observer=keeper)
    events.emit("started", pid=1, model="tiny", dataset="d.jsonl")
    events.emit("model_loaded", backend="transformers", max_steps=steps)
    for step in range(1, steps + 1):
        events.emit("step", step=step, loss=1.0 / step, lr=1e-4, epoch=step / 100, tokens_per_s=100.0,
                    note="x" * 200)
        if step % 50 == 0:
            events.emit("warning", step=step, message=f"warning {step}")
    if finish:
        events.emit("finished", reason="completed", step=steps, loss=0.5, message=f"trained {steps} steps")
    events.close()
    keeper.flush()
    return paths


def test_status_from_the_snapshot_equals_the_full_fold_and_reads_only_the_tail(tmp_path):
    paths = write_long_run(tmp_path / "long", 3000)
    snapshot = load_snapshot(paths)
    assert snapshot is not None and snapshot[1] == paths.events.stat().st_size
    with_snapshot = summarize_run(paths.root)
    _, _, folded = fold_log(paths)
    assert folded == 0, "everything the snapshot covers is not read again"
    paths.summary.unlink()
    without = summarize_run(paths.root)
    assert with_snapshot.to_dict() == without.to_dict()
    assert without.status == "finished" and without.step == 3000
    assert len(without.warnings) == 50 and without.warnings[-1] == "warning 3000", "warnings kept are bounded"


def test_events_after_the_snapshot_are_folded_in(tmp_path):
    paths = write_long_run(tmp_path / "long", 100, finish=False)
    with open(paths.events, "a") as log:
        log.write(json.dumps({"v": 1, "ts": time.time(), "type": "finished", "reason": "stopped", "step": 100,
                              "message": "stopped at step 100"}) + "\n")
    assert summarize_run(paths.root).status == "stopped"


def test_a_snapshot_of_another_log_or_with_wrong_types_is_ignored(tmp_path):
    paths = write_long_run(tmp_path / "long", 200)
    log = paths.events.read_bytes()
    paths.events.write_bytes(log.replace(b'"reason":"completed"', b'"reason":"stopped!!!"'))
    assert load_snapshot(paths) is None, "the log's last bytes differ from those the snapshot was folded from"
    assert summarize_run(paths.root).status == "finished"
    paths.events.write_bytes(log)
    data = json.loads(paths.summary.read_text())
    for field, value in (("step", "12"), ("status", "pwned"), ("warnings", [1]), ("loss", True)):
        bad = {**data, "summary": {**data["summary"], field: value}}
        paths.summary.write_text(json.dumps(bad))
        assert load_snapshot(paths) is None, field
        assert summarize_run(paths.root).status == "finished"


def test_a_reader_that_folded_a_long_dead_log_leaves_a_snapshot(tmp_path, monkeypatch):
    import engine.run.status as status

    paths = write_long_run(tmp_path / "long", 500)
    paths.summary.unlink()
    monkeypatch.setattr(status, "CACHE_AFTER_BYTES", 1000)
    summarize_run(paths.root)
    assert load_snapshot(paths)[1] == paths.events.stat().st_size


def test_the_monitor_shows_the_snapshot_while_a_long_log_loads_and_loading_without_one(tmp_path):
    paths = write_long_run(tmp_path / "long", 20000)
    assert paths.events.stat().st_size > 4 << 20
    history = RunHistory(paths.root)
    history.poll(limit_bytes=1 << 20, budget_s=0)
    assert history.loading and history.summary.status == "finished", "the snapshot's status, not 'lost'"
    assert history.tail.offset < paths.events.stat().st_size
    paths.summary.unlink()
    history = RunHistory(paths.root)
    history.poll(limit_bytes=1 << 20, budget_s=0)
    assert history.summary.status == "loading" and "MB left" in history.summary.message
    while history.loading:
        history.poll()
    assert history.summary.status == "finished" and len(history.loss) == 20000


def test_home_follows_only_the_log_after_the_snapshot(tmp_path):
    paths = write_long_run(tmp_path / "long", 2000)
    history = RunHistory(paths.root, curves=False)
    assert history.poll() == 0 and history.summary.status == "finished" and history.summary.step == 2000


def test_a_line_longer_than_a_read_is_skipped_without_holding_it(tmp_path):
    log = tmp_path / "events.jsonl"
    good = json.dumps({"type": "step", "step": 1}) + "\n"
    log.write_text(good + json.dumps({"type": "warning", "message": "x" * 50_000}) + "\n" + good)
    tail = EventTail(log)
    seen = []
    for _ in range(20):
        seen += tail.read_new(4096)
    assert [e["step"] for e in seen] == [1, 1] and tail.bad_lines == 1


def test_the_event_log_and_snapshot_are_private(tmp_path):
    paths = write_long_run(tmp_path / "long", 5)
    assert os.stat(paths.events).st_mode & 0o077 == 0
    assert os.stat(paths.summary).st_mode & 0o077 == 0


def test_a_step_event_with_odd_values_never_spoils_the_snapshot(tmp_path):
    paths = RunPaths(tmp_path / "odd")
    paths.root.mkdir()
    keeper = SummaryKeeper(paths)
    events = EventWriter(paths.events, observer=keeper)
    events.emit("started", pid=1)
    events.emit("step", step=1, loss=1.0, padding="lots", mfu=True)
    events.close()
    keeper.flush()
    summary, _ = load_snapshot(paths)
    assert summary.padding is None and summary.mfu is None and summary.step == 1


def test_a_poll_that_stops_short_of_the_end_is_still_loading_however_little_is_left(tmp_path):
    paths = write_long_run(tmp_path / "long", 4000)
    paths.summary.unlink()
    size = paths.events.stat().st_size
    history = RunHistory(paths.root)
    history.poll(limit_bytes=size - 50_000, budget_s=0)  # all but the last ~50 KB: the end of the run
    assert 0 < history.tail.behind() < 1 << 20
    assert history.loading and history.summary.status == "loading", "not the half-read log's 'lost'"
    history.poll()
    assert not history.loading and history.summary.status == "finished"
