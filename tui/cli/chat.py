"""`loradeck chat`: the TUI chat, one-shot answers from base and adapters, or blind A/B rating in a plain
terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parsers(sub) -> None:
    """The `chat` parser."""
    chat = sub.add_parser("chat", help="base vs adapters side by side: TUI chat, one-shot answers or blind A/B rating",
                          description="Without --prompt/--prompts, opens the TUI chat screen. With them, prints the "
                                      "answers of the base model and each adapter; --blind shows two answers "
                                      "unlabelled, asks which is better, saves the verdict and prints the tally.")
    chat.add_argument("--prompt", "-p", default=None, help="one user message")
    chat.add_argument("--prompts", default=None, metavar="FILE|RUN",
                      help="a prompts file (.txt one per line, or a dataset file) or a run directory (its held-out rows)")
    chat.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    chat.add_argument("--base", "-m", default=None,
                      help="base model (default: the adapter's run config, else --config's, else smollm2-135m-instruct)")
    chat.add_argument("--adapter", "-a", action="append", default=[], metavar="DIR",
                      help="a PEFT adapter, run directory, checkpoint or handoff bundle (repeatable)")
    chat.add_argument("--compare", action="store_true", help="also answer with the base model")
    chat.add_argument("--blind", action="store_true", help="rate two answers without knowing which model wrote them")
    chat.add_argument("--ratings", default=None, metavar="DIR",
                      help="where --blind saves ratings.jsonl / preferences.jsonl (default: RUN/chat of the adapter)")
    chat.add_argument("--system", default=None, help="optional system message")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--4bit", dest="load_in_4bit", action="store_true", help="load the base in 4-bit NF4")
    chat.add_argument("--json", action="store_true", help="one JSON object per prompt (answers by model) instead of text")


def _chat_prompts(args):
    from engine.data.prompts import PromptItem, held_out_prompts, prompts_from_file

    system = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        return [PromptItem(system + [{"role": "user", "content": args.prompt}], None, "--prompt")]
    source = Path(args.prompts).expanduser()
    items = held_out_prompts(source, args.limit) if source.is_dir() else prompts_from_file(source, args.limit)
    if system:
        for item in items:
            if item.messages[0]["role"] != "system":
                item.messages.insert(0, dict(system[0]))
    return items


def _cmd_chat(args) -> int:
    from engine.chat.generation import BASE_LABEL, ChatModels, GenerationSettings, Pane
    from engine.models.adapters import base_for
    from engine.models.loading import check_model_name
    from engine.config import load_config
    from engine.errors import ConfigError

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, seed=args.seed)
    if settings.problem():
        raise ConfigError(f"chat: {settings.problem()}")
    config_base = load_config(args.config).model.name if args.config else None
    base, run_4bit = base_for(args.adapter, args.base, config_base)
    check_model_name(base)  # before any library loads
    if args.prompt is None and args.prompts is None:
        if args.blind or args.json:
            raise ConfigError("chat: --blind and --json need --prompt or --prompts (or drop them to open the TUI)")
        from tui.app import LoradeckApp

        LoradeckApp(Path(args.runs_dir), args.config, chat=(base, args.adapter, args.load_in_4bit or run_4bit)).run()
        return 0
    prompts = _chat_prompts(args)
    ratings = _blind_ratings_folder(args) if args.blind else None  # refused before any model loads
    from engine.library_output import leave_bitsandbytes_unimported

    load_in_4bit = args.load_in_4bit or run_4bit
    leave_bitsandbytes_unimported(load_in_4bit)
    models = ChatModels(base, args.adapter, load_in_4bit=load_in_4bit)
    labels = [label for label in models.labels if label != BASE_LABEL]
    if args.compare or not labels:
        labels.insert(0, BASE_LABEL)
    if args.blind:
        return _blind_chat(models, labels, prompts, settings, ratings)
    for number, item in enumerate(prompts, 1):
        panes = [Pane(label, item.messages) for label in labels]
        if args.json:
            result = models.answer(panes, settings)
            print(json.dumps({"prompt": item.messages, "answers": {a.label: a.text for a in result.answers}},
                             ensure_ascii=False), flush=True)
            continue
        if len(prompts) > 1:
            print(("\n" if number > 1 else "") + f"━━ {number}/{len(prompts)}: {item.text}", flush=True)
        if len(panes) == 1:  # one pane streams to the terminal; several are answered in one batch, then printed
            models.answer(panes, settings, on_text=lambda pane, text: print(text, end="", flush=True))
            print()
            continue
        for index, answer in enumerate(models.answer(panes, settings).answers):
            print(("\n" if index else "") + f"── {answer.label} ──\n{answer.text}", flush=True)
    return 0


BLIND_KEYS = {"a": "left", "1": "left", "b": "right", "2": "right", "t": "tie", "=": "tie", "x": "both_bad",
              "0": "both_bad"}


def _blind_ratings_folder(args) -> Path:
    """Where `chat --blind` saves its ratings; refuses, in one line, anything but exactly two models to compare."""
    from engine.chat.generation import BASE_LABEL, ratings_folder
    from engine.errors import ConfigError

    compared = ([BASE_LABEL] if args.compare or not args.adapter else []) + [str(a) for a in args.adapter]
    if len(compared) != 2:
        raise ConfigError(f"chat --blind compares exactly two models, got {len(compared)} ({', '.join(compared)}) — "
                          "pass one --adapter with --compare, or two adapters")
    folder = Path(args.ratings).expanduser() if args.ratings else ratings_folder(args.adapter)
    if folder is None:
        raise ConfigError("chat --blind: this adapter is not inside a run directory — say where to save the ratings "
                          "with --ratings DIR")
    return folder


def _blind_chat(models, labels, prompts, settings, folder: Path) -> int:
    """Plain-terminal blind A/B: two answers as A and B, one key, reveal, save, tally."""
    import random

    from engine.chat.generation import BASE_LABEL, Pane
    from engine.chat.rating import RatingLog, blind_sides, tally

    log = RatingLog(folder)
    challenger, reference = (labels[1], labels[0]) if labels[0] == BASE_LABEL else (labels[0], labels[1])
    rng = random.Random()
    for number, item in enumerate(prompts, 1):
        left, right = blind_sides((labels[0], labels[1]), rng)
        result = models.answer([Pane(left, item.messages), Pane(right, item.messages)], settings)
        answers = [answer.text for answer in result.answers]
        print(f"\n━━ {number}/{len(prompts)}: {item.text}\n── A ──\n{answers[0]}\n── B ──\n{answers[1]}", flush=True)
        verdict = None
        while verdict is None:
            print("which is better? [a] A  [b] B  [t] tie  [x] both bad  [s] skip  [q] quit: ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                print()
                verdict = "quit"
                break
            if not sys.stdin.isatty():
                print(line.strip(), flush=True)  # echo piped answers so the transcript reads like a session
            key = line.strip().lower()[:1]
            verdict = {"s": "skip", "q": "quit"}.get(key) or BLIND_KEYS.get(key)
        if verdict == "quit":
            break
        print(f"A was {left}, B was {right}", flush=True)
        if verdict != "skip":
            log.record(item.messages, (left, answers[0]), (right, answers[1]), verdict, settings.to_dict())
    result = tally(log.rows(), challenger, reference)
    print(f"\n{result.summary()}\nratings: {log.ratings_path}\npreferences (DPO): {log.preferences_path}")
    return 0


COMMANDS = {"chat": _cmd_chat}
