"""The chat screen through Textual's pilot, with a real worker process and a tiny model."""

import asyncio
import json
import os
import random
import signal

import pytest
from textual.widgets import Input, Static

from engine.chat.generation import GenerationSettings
from tests.integration.test_chat_cli import fake_run_with_adapter
from tests.tui.pilot_helpers import type_text, wait_until
from tui.app import LoradeckApp
from tui.screens.chat import ChatScreen, DiffScreen, SettingsScreen


@pytest.fixture
def chat_run(chatty_model_dir, tmp_path):
    """A finished run directory whose adapter is a real (random) LoRA over the chatty tiny model."""
    return fake_run_with_adapter(chatty_model_dir, tmp_path / "runs" / "demo-run")


def record_events(screen):
    seen = []
    original = screen._on_worker_event

    def spy(event):
        seen.append(event)
        original(event)
    screen._on_worker_event = spy
    return seen


async def open_chat(pilot, app) -> ChatScreen:
    await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen))
    screen = app.screen
    await wait_until(pilot, lambda: screen.worker_state == "ready")
    return screen


def test_panes_stream_side_by_side_and_keep_their_own_conversations(chat_run, tmp_path):
    async def scenario():
        app = LoradeckApp(tmp_path / "runs", chat=(None, [str(chat_run)], False))
        async with app.run_test(size=(120, 36)) as pilot:
            screen = await open_chat(pilot, app)
            screen.settings = GenerationSettings(max_new_tokens=24)  # streaming is the point, not long answers
            events = record_events(screen)
            assert screen.labels == ["base", "demo-run"]
            assert "one copy" in str(app.screen.query_one("#chat-status", Static).render())
            await type_text(pilot, "What is the capital of Peru?")
            await pilot.press("enter")
            await wait_until(pilot, lambda: not screen.generating)
            for pane in (0, 1):
                pieces = [e for e in events if e.get("event") == "text" and e["pane"] == pane]
                assert len(pieces) > 1, "answers arrive token by token"
                assert "".join(p["text"] for p in pieces).strip() == screen.panes[pane].messages[-1]["content"]
            base, adapted = screen.panes
            assert base.messages[-1]["content"] != adapted.messages[-1]["content"]
            await type_text(pilot, "And of Chile?")
            await pilot.press("enter")
            await wait_until(pilot, lambda: not screen.generating)
            for pane in screen.panes:
                assert [m["role"] for m in pane.messages] == ["user", "assistant", "user", "assistant"]
            assert base.messages[1] != adapted.messages[1]  # each pane continues its own conversation

            await pilot.press("ctrl+y")
            assert app.clipboard == adapted.messages[-1]["content"]
            await pilot.press("ctrl+d")
            await wait_until(pilot, lambda: isinstance(app.screen, DiffScreen))
            await pilot.press("escape")
            await pilot.press("ctrl+s")
            saved = list((chat_run / "chat").glob("conversation-*.json"))
            assert len(saved) == 1
            assert json.loads(saved[0].read_text())["panes"][1]["messages"] == adapted.messages

            await pilot.press("f2")
            await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
            app.screen.query_one("#setting-top_p", Input).value = "0"
            await pilot.press("enter")
            assert "top-p" in str(app.screen.query_one("#settings-error").render())
            app.screen.query_one("#setting-top_p", Input).value = "0.9"
            app.screen.query_one("#setting-temperature", Input).value = "0.8"
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen))
            assert (screen.settings.temperature, screen.settings.top_p) == (0.8, 0.9)
    asyncio.run(scenario())


def test_blind_rating_hides_labels_reveals_after_rating_and_saves_preferences(chat_run, tmp_path):
    async def scenario():
        app = LoradeckApp(tmp_path / "runs", chat=(None, [str(chat_run)], False))
        async with app.run_test(size=(120, 36)) as pilot:
            screen = await open_chat(pilot, app)
            screen.settings = GenerationSettings(max_new_tokens=24)  # the verdicts are the point, not long answers
            screen.rng = random.Random(1)  # some rounds swap sides, some do not
            await pilot.press("ctrl+b")
            assert screen.blind
            await pilot.press("f3")
            await pilot.pause(0.1)
            await pilot.press("enter")  # the run directory is offered: its held-out rows
            verdicts = ["left", "right", "tie", "both_bad", "left", "right"]
            keys = {"left": "a", "right": "right", "tie": "t", "both_bad": "x"}
            rounds = []
            for verdict in verdicts:
                await wait_until(pilot, lambda: screen.round is not None and screen.round.answers is not None
                                 and screen.round.verdict is None)
                titles = [widget.border_title for widget in screen.pane_widgets]
                assert titles == ["A · left", "B · right"], "labels stay hidden until rated"
                tally_text = str(screen.query_one("#chat-tally", Static).render())
                assert "rate:" in tally_text
                round_ = screen.round
                await pilot.press(keys[verdict])
                assert round_.verdict == verdict
                rounds.append(round_)
                assert f"A was {round_.left}, B was {round_.right}" in screen.last_reveal
            assert {r.left for r in rounds} == {"base", "demo-run"}, "sides are shuffled"
            assert screen.prompt_index == len(verdicts) + 1  # each rating moved on to the next prompt

            ratings = [json.loads(line) for line in (chat_run / "chat" / "ratings.jsonl").read_text().splitlines()]
            assert [r["verdict"] for r in ratings] == verdicts
            for row, round_ in zip(ratings, rounds):
                assert (row["left_label"], row["right_label"]) == (round_.left, round_.right)
                assert (row["left"], row["right"]) == round_.answers
            preferences = [json.loads(l) for l in (chat_run / "chat" / "preferences.jsonl").read_text().splitlines()]
            decisive = [(r, row) for r, row in zip(rounds, ratings) if row["verdict"] in ("left", "right")]
            assert len(preferences) == len(decisive) == 4
            for preference, (round_, row) in zip(preferences, decisive):
                winner = 0 if row["verdict"] == "left" else 1
                assert preference["chosen"][0]["content"] == round_.answers[winner]
                assert preference["rejected"][0]["content"] == round_.answers[1 - winner]
                assert preference["prompt"][-1]["role"] == "user"
            wins = sum(1 for r in rounds if r.verdict in ("left", "right")
                       and (r.left if r.verdict == "left" else r.right) == "demo-run")
            tally_text = str(screen.query_one("#chat-tally", Static).render())
            assert f"demo-run wins {wins} · base wins {4 - wins} · ties 1 · both bad 1" in tally_text
    asyncio.run(scenario())


def test_a_killed_worker_is_reported_and_restarted_and_the_screen_keeps_working(chat_run, tmp_path):
    async def scenario():
        app = LoradeckApp(tmp_path / "runs", chat=(None, [str(chat_run)], False))
        async with app.run_test(size=(120, 36)) as pilot:
            screen = await open_chat(pilot, app)
            first_pid = screen.client.process.pid
            os.kill(first_pid, signal.SIGKILL)
            await wait_until(pilot, lambda: screen.restarts)
            # notify() posts a message; the app files it on its next turn
            await wait_until(pilot, lambda: any("chat worker stopped" in n.message for n in app._notifications), timeout=5)
            await wait_until(pilot, lambda: screen.worker_state == "ready")
            assert screen.client.process.pid != first_pid
            screen.settings = GenerationSettings(max_new_tokens=8)
            await type_text(pilot, "hello")
            await pilot.press("enter")
            await wait_until(pilot, lambda: not screen.generating)
            assert all(pane.messages[-1]["role"] == "assistant" for pane in screen.panes)
        assert screen.client.process.poll() is not None, "leaving the app stops the worker"
    asyncio.run(scenario())


def test_t_on_a_dpo_run_rates_it_again_blind_against_its_starting_adapter_on_the_prompts_rated_before(
        chatty_model_dir, tmp_path):
    import tomli_w

    from engine.chat.rating import RatingLog
    from tests.tui.pilot_helpers import select_run

    runs = tmp_path / "runs"
    sft = fake_run_with_adapter(chatty_model_dir, runs / "sft")
    earlier = RatingLog(sft / "chat")
    for number, verdict in enumerate(("left", "left", "right")):
        earlier.record([{"role": "user", "content": f"Question {number}?"}], ("sft", "x"), ("base", "y"), verdict)
    dpo = fake_run_with_adapter(chatty_model_dir, runs / "dpo", seed=5)
    (dpo / "config.toml").write_text(tomli_w.dumps({"model": {"name": str(chatty_model_dir), "adapter": str(sft)},
                                                    "train": {"method": "dpo"}}))

    async def scenario():
        app = LoradeckApp(runs)
        async with app.run_test(size=(120, 36)) as pilot:
            await select_run(pilot, app, "dpo")
            await pilot.press("t")  # one key
            screen = await open_chat(pilot, app)
            screen.settings = GenerationSettings(max_new_tokens=24)
            assert screen.labels == ["base", "dpo", "sft"] and screen.blind
            assert screen._blind_pair() == ("dpo", "sft"), "the DPO adapter against the one it started from"
            assert [item.text for item in screen.prompt_set] == ["Question 0?", "Question 1?", "Question 2?"]
            await wait_until(pilot, lambda: screen.round is not None and not screen.generating)
            tally_text = str(screen.query_one("#chat-tally", Static).render())
            assert "before DPO (sft vs base): sft wins 2 · base wins 1" in tally_text
            await pilot.press("a")
            await wait_until(pilot, lambda: (dpo / "chat" / "ratings.jsonl").is_file())
            row = json.loads((dpo / "chat" / "ratings.jsonl").read_text().splitlines()[0])
            assert {row["left_label"], row["right_label"]} == {"dpo", "sft"} and row["prompt"][-1]["content"] == \
                "Question 0?"
            tally_text = str(screen.query_one("#chat-tally", Static).render())
            assert "now:" in tally_text and ("dpo wins 1" in tally_text or "sft wins 1" in tally_text)

    asyncio.run(scenario())
