"""A disk that fills up mid-run (a real size-limited tmpfs): earlier saves stay intact, the run says what happened
in whole events, and old checkpoints can be pruned."""

import shutil
import subprocess

import pytest

from engine.run.events import read_events
from engine.run.status import summarize_run
from engine.run.paths import complete_checkpoints
from engine.train.checkpoint import verify_checkpoint
from engine.train.run import run_training
from tests.conftest import tiny_config


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB filesystem of its own (needs root to mount; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                                                       capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk):
    """Write zeros until the filesystem refuses (ENOSPC)."""
    block = b"\0" * (1 << 20)
    with open(disk / "filler", "wb", buffering=0) as handle:
        while True:
            try:
                handle.write(block)
            except OSError:
                break
    with open(disk / "filler2", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_disk_full_before_the_first_save_ends_in_one_clear_error_event(tiny_model_dir, small_disk):
    run_dir = small_disk / "run"

    def on_step(event):
        if event["step"] in (1, 3):  # the second time after the trainer gave back its reserve
            fill(small_disk)

    config = tiny_config(tiny_model_dir, "train.max_steps=4", "train.save_every=2")
    code = run_training(run_dir, config, on_step=on_step)
    assert code != 0
    lines = (run_dir / "events.jsonl").read_bytes().splitlines()
    events = read_events(run_dir / "events.jsonl")
    assert len(events) == len(lines), "every line of the log is a whole event"
    disk = [e for e in events if e["type"] == "warning" and e.get("kind") == "disk"]
    assert disk and disk[0]["message"].startswith("disk full while saving step 2: nothing was saved before it")
    assert "keep_checkpoints" in disk[0]["message"]
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4], "training went on after it"
    error = [e for e in events if e["type"] == "error"]
    assert error and error[-1]["message"].startswith("disk full while saving step 4")
    assert "SafetensorError" not in error[-1]["message"] and len(error[-1]["message"]) < 300
    assert summarize_run(run_dir).status == "failed"
    assert not list(run_dir.glob("checkpoints/.*")) and not list(run_dir.glob(".*tmp*")), "no staging left"


def test_saves_skip_while_the_disk_is_full_and_old_checkpoints_are_pruned(tiny_model_dir, small_disk):
    run_dir = small_disk / "run"

    def on_step(event):
        if event["step"] == 3:
            fill(small_disk)
        if event["step"] == 4:
            (small_disk / "filler").unlink()
            (small_disk / "filler2").unlink()

    config = tiny_config(tiny_model_dir, "train.max_steps=6", "train.save_every=1", "train.keep_checkpoints=2")
    assert run_training(run_dir, config, on_step=on_step) == 0
    events = read_events(run_dir / "events.jsonl")
    disk = [e["message"] for e in events if e["type"] == "warning" and e.get("kind") == "disk"]
    assert len(disk) == 1 and disk[0].startswith("skipped the periodic checkpoint at step 3")
    assert "checkpoint step-000002 and the handoff from step 2 are kept" in disk[0]
    saved = [(e["step"], e.get("skipped_saves")) for e in events if e["type"] == "checkpoint"]
    assert saved == [(1, None), (2, None), (4, 1), (5, None), (6, None)], "the save after the gap says so"
    assert [p.name for p in complete_checkpoints(run_dir / "checkpoints")] == ["step-000005", "step-000006"]
    assert verify_checkpoint(run_dir / "handoff")["global_step"] == 6
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert summarize_run(run_dir).status == "finished"
    assert not (run_dir / ".space-reserve").exists(), "the reserve is given back when the run ends"
