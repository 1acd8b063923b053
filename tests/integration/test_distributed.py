"""Several training processes (DDP over gloo on this CPU, started by `accelerate launch`) and one run directory:
the same rows and losses as one process with the whole batch, one event log, everyone stopping together."""

import os
import signal

from engine.run.events import read_events
from engine.train.checkpoint import verify_checkpoint
from tests.integration.test_train_cli import DEMO, loradeck, tiny_sets, wait_for


def losses(run_dir):
    return {e["step"]: e["loss"] for e in read_events(run_dir / "events.jsonl") if e["type"] == "step"}


def finished(run_dir):
    return next((e for e in read_events(run_dir / "events.jsonl") if e["type"] in ("finished", "error")), None)


def pids_of(run_dir) -> list[int]:
    """Every process whose command line names this run directory (the launcher and its ranks)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(run_dir) in command and "engine.train.worker" in command:
                found.append(int(entry))
    return found


def test_two_processes_of_batch_2_train_exactly_as_one_of_batch_4(tiny_model_dir, tmp_path):
    common = ["train.max_steps=6", "train.eval_every=3", "train.save_every=3", "lora.dropout=0",
              "data.eval_path=", "data.eval_split=0.1"]
    for name, processes, batch in (("two", 2, 2), ("one", 1, 4)):
        result = loradeck("train", DEMO, "--run-dir", str(tmp_path / name), *tiny_sets(
            tiny_model_dir, *common, f"train.batch_size={batch}", f"distributed.processes={processes}"))
        assert result.returncode == 0, result.stderr
    for name in ("two", "one"):
        wait_for(lambda: finished(tmp_path / name), timeout=300)
    two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert sorted(two) == sorted(one) == list(range(1, 7))
    assert max(abs(two[step] - one[step]) for step in one) < 1e-4, (two, one)
    events = list(read_events(tmp_path / "two" / "events.jsonl"))
    assert all(e.get("world_size") == 2 for e in events), "every event says how many processes trained"
    assert finished(tmp_path / "two")["type"] == "finished"
    assert [e["type"] for e in events].count("started") == 1, "one voice: rank 0 writes the log"
    evals = [e for e in events if e["type"] == "eval"]
    assert len(evals) == 2 and all(e["eval_loss"] > 0 for e in evals)
    two_state = verify_checkpoint(tmp_path / "two" / "handoff")
    one_state = verify_checkpoint(tmp_path / "one" / "handoff")
    assert two_state["samples_consumed"] == one_state["samples_consumed"] == 24, "a global cursor: 6 steps x 4 rows"
    wait_for(lambda: not pids_of(tmp_path / "two"), timeout=60)


def test_sigterm_to_the_launcher_stops_every_rank_with_one_clean_save(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = loradeck("train", DEMO, "--run-dir", str(run_dir), *tiny_sets(
        tiny_model_dir, "train.max_steps=100000", "distributed.processes=2", "lora.dropout=0"))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(losses(run_dir)) >= 3, timeout=300)
    launcher = next(pid for pid in pids_of(run_dir) if "accelerate" in open(f"/proc/{pid}/cmdline").read())
    os.kill(launcher, signal.SIGTERM)
    end = wait_for(lambda: finished(run_dir), timeout=120)
    assert end["type"] == "finished" and end["reason"] == "stopped", end
    saves = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "checkpoint"]
    assert len([s for s in saves if s.get("final")]) == 1
    state = verify_checkpoint(run_dir / "handoff")
    assert state["global_step"] == end["step"]
    wait_for(lambda: not pids_of(run_dir), timeout=60)  # no rank left behind


def test_a_bundle_saved_by_two_processes_resumes_on_one_with_the_same_rows(tiny_model_dir, tmp_path):
    common = ["lora.dropout=0", "data.eval_path=", "data.eval_split=0", "train.lr_scheduler=constant",
              "train.warmup_steps=0", "session.with_optimizer=true"]
    assert loradeck("train", DEMO, "--run-dir", str(tmp_path / "whole"), "--foreground", *tiny_sets(
        tiny_model_dir, *common, "train.max_steps=6", "train.batch_size=4")).returncode == 0
    part1 = loradeck("train", DEMO, "--run-dir", str(tmp_path / "part1"), "--foreground", "--processes", "2",
                     *tiny_sets(tiny_model_dir, *common, "train.max_steps=3", "train.batch_size=2"))
    assert part1.returncode == 0, part1.stderr + (tmp_path / "part1" / "trainer.log").read_text()[-3000:]
    resumed = loradeck("resume", str(tmp_path / "part1" / "handoff"), "--run-dir", str(tmp_path / "part2"),
                       "--foreground", "--processes", "1", "--set", "train.max_steps=6")
    assert resumed.returncode == 0, resumed.stderr
    assert "saved by 2 process(es), resumed by 1: train.grad_accum 1 -> 2 keeps the global batch of 4 rows" \
        in resumed.stderr
    whole, part1, part2 = (losses(tmp_path / name) for name in ("whole", "part1", "part2"))
    assert sorted(part1) == [1, 2, 3] and sorted(part2) == [4, 5, 6]
    assert max(abs({**part1, **part2}[step] - whole[step]) for step in whole) < 1e-4, (whole, part1, part2)


def test_a_killed_rank_fails_the_run_with_an_error_naming_it_and_leaves_no_process(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert loradeck("train", DEMO, "--run-dir", str(run_dir), *tiny_sets(
        tiny_model_dir, "train.max_steps=100000", "distributed.processes=2")).returncode == 0
    wait_for(lambda: len(losses(run_dir)) >= 3, timeout=300)

    def rank_of(pid):
        environment = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        return next((int(item[5:]) for item in environment if item.startswith(b"RANK=")), None)

    rank_1 = next(pid for pid in pids_of(run_dir) if rank_of(pid) == 1)
    os.kill(rank_1, signal.SIGKILL)
    end = wait_for(lambda: finished(run_dir), timeout=180)
    assert end["type"] == "error" and end["message"].startswith("rank 1 of 2 ended"), end
    wait_for(lambda: not pids_of(run_dir), timeout=120)


def test_the_session_clock_stops_two_processes_before_the_deadline_with_one_save(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert loradeck("train", DEMO, "--run-dir", str(run_dir), "--session", "30s", *tiny_sets(
        tiny_model_dir, "train.max_steps=100000", "train.log_every=20", "session.buffer=3s",
        "distributed.processes=2")).returncode == 0
    end = wait_for(lambda: finished(run_dir), timeout=120)
    assert end["type"] == "finished" and end["reason"] == "deadline", end
    deadline = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "deadline"][-1]
    assert end["ts"] <= deadline["deadline_at"], "every rank stopped before the deadline"
    finals = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "checkpoint" and e.get("final")]
    assert len(finals) == 1 and verify_checkpoint(run_dir / "handoff")["global_step"] == end["step"]
    wait_for(lambda: not pids_of(run_dir), timeout=60)


def test_a_foreground_run_whose_processes_fail_says_why_in_one_line(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    result = loradeck("train", DEMO, "--run-dir", str(tmp_path / "run"), "--foreground", "--processes", "2",
                      *tiny_sets(broken))
    assert result.returncode == 1
    assert result.stderr.startswith("error: SafetensorError:") and result.stderr.count("\n") == 1, result.stderr
    assert finished(tmp_path / "run")["type"] == "error"
