"""An Ollama Modelfile for an exported GGUF: the chat template translated, checked against the model's own.

Ollama renders prompts with Go templates, not the Jinja chat template the
model was trained with, so the template has to be translated. Each chat style
we know (ChatML, Llama 3, Mistral / Llama 2 `[INST]`, Gemma) has a few
candidate Go templates; the one chosen is the first that renders the probe
conversations exactly as the model's Jinja template does (rendered here by a
small interpreter of the Go template subset the candidates use). A template
no candidate reproduces is refused rather than guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ModelError

# ---------------------------------------------------------------- a Go text/template subset

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _parse(template: str) -> list:
    """Go template text -> a tree of ("text", s) / ("out", expr) / ("if", [(cond, body)...], else) / ("range", ...)."""
    tokens: list[tuple[str, str]] = []
    position = 0
    for match in _ACTION.finditer(template):
        text = template[position:match.start()]
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        tokens.append(("text", text))
        tokens.append(("action", match.group(2)))
        position = match.end()
        if match.group(3):
            rest = template[position:]
            position += len(rest) - len(rest.lstrip(" \t\r\n"))
    tokens.append(("text", template[position:]))

    def block(index: int, closers: tuple[str, ...]) -> tuple[list, int, str]:
        nodes: list = []
        while index < len(tokens):
            kind, value = tokens[index]
            index += 1
            if kind == "text":
                if value:
                    nodes.append(("text", value))
                continue
            word = value.split(" ", 1)[0]
            if word in closers or (word == "else" and "else" in closers):
                return nodes, index, value
            if word == "if":
                branches, otherwise = [], []
                condition = value[3:].strip()
                while True:
                    body, index, closer = block(index, ("end", "else"))
                    branches.append((condition, body))
                    if closer == "end":
                        break
                    if closer.startswith("else if "):
                        condition = closer[8:].strip()
                        continue
                    otherwise, index, closer = block(index, ("end",))
                    break
                nodes.append(("if", branches, otherwise))
            elif word == "range":
                spec = value[6:].strip()
                variables, _, expression = spec.rpartition(":=")
                names = [v.strip() for v in variables.split(",")] if variables else []
                body, index, _ = block(index, ("end",))
                nodes.append(("range", names, expression.strip(), body))
            else:
                nodes.append(("out", value))
        if closers:
            raise ValueError(f"template: missing {{{{ end }}}} for {closers}")
        return nodes, index, ""

    return block(0, ())[0]


def _words(expression: str) -> list[str]:
    return re.findall(r'"(?:[^"\\]|\\.)*"|\S+', expression)


def _value(word: str, dot: Any, variables: dict[str, Any]) -> Any:
    if word.startswith('"'):
        return word[1:-1].encode().decode("unicode_escape")
    if re.fullmatch(r"-?\d+", word):
        return int(word)
    head, *fields = word.split(".")
    value = dot if head == "" else variables[head]
    for name in fields:
        if name:
            value = value.get(name) if isinstance(value, dict) else getattr(value, name)
    return value


def _evaluate(expression: str, dot: Any, variables: dict[str, Any]) -> Any:
    words = _words(expression)
    function, arguments = words[0], [_value(w, dot, variables) for w in words[1:]]
    if function == "eq":
        return any(arguments[0] == other for other in arguments[1:])
    if function == "ne":
        return arguments[0] != arguments[1]
    if function == "not":
        return not arguments[0]
    if function == "and":
        return all(arguments)
    if function == "or":
        return any(arguments)
    return _value(function, dot, variables)


def render_go_template(template: str, data: dict[str, Any]) -> str:
    """Render the subset of Go's text/template our Modelfile templates use: text with `{{-`/`-}}` trimming,
    `{{ .Field }}`, `{{ $.Field }}`, `if`/`else if`/`else` with eq/ne/and/or/not, and `range` over a list."""

    def run(nodes: list, dot: Any, variables: dict[str, Any]) -> str:
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "out":
                value = _evaluate(node[1], dot, variables)
                out.append("" if value is None else str(value))
            elif node[0] == "if":
                for condition, body in node[1]:
                    if _evaluate(condition, dot, variables):
                        out.append(run(body, dot, variables))
                        break
                else:
                    out.append(run(node[2], dot, variables))
            else:
                _, names, expression, body = node
                for index, item in enumerate(_evaluate(expression, dot, variables) or []):
                    scope = dict(variables)
                    if len(names) == 2:
                        scope[names[0]], scope[names[1]] = index, item
                    elif len(names) == 1:
                        scope[names[0]] = item
                    out.append(run(body, item, scope))
        return "".join(out)

    return run(_parse(template), data, {"$": data})


# ---------------------------------------------------------------- chat styles

@dataclass
class ChatStyle:
    """One family of chat templates: how to recognise it and the Go templates that may reproduce it."""

    name: str
    marker: str  # text the rendered Jinja template contains
    candidates: list[str]
    stops: list[str] = field(default_factory=list)


CHATML = ChatStyle("ChatML", "<|im_start|>", [
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
], ["<|im_end|>", "<|im_start|>"])
LLAMA3 = ChatStyle("Llama 3", "<|start_header_id|>", [
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
], ["<|eot_id|>", "<|start_header_id|>"])
INST = ChatStyle("Mistral / Llama 2 [INST]", "[INST]", [
    # Llama 2: the system prompt inside the first [INST] (a user turn at index 1 follows a system turn),
    # " answer </s>", each later turn opens with <s> (the first <s> is the GGUF's own BOS)
    "{{- range $i, $m := .Messages }}{{ if eq .Role \"system\" }}[INST] <<SYS>>\n{{ .Content }}\n<</SYS>>\n\n"
    "{{ else if eq .Role \"user\" }}{{ if eq $i 1 }}{{ .Content }} [/INST]{{ else }}{{ if $i }}<s>{{ end }}[INST] "
    "{{ .Content }} [/INST]{{ end }}{{ else }} {{ .Content }} </s>{{ end }}{{ end }}",
    # Mistral v0.1-v0.3: "[INST] question [/INST]answer</s>", no system turn
    "{{- range .Messages }}{{ if eq .Role \"user\" }}[INST] {{ .Content }} [/INST]{{ else }}{{ .Content }}</s>"
    "{{ end }}{{ end }}",
    "{{- range .Messages }}{{ if eq .Role \"user\" }}[INST] {{ .Content }}[/INST]{{ else }}{{ .Content }}</s>"
    "{{ end }}{{ end }}",
    "{{- range .Messages }}{{ if eq .Role \"user\" }}[INST]{{ .Content }}[/INST]{{ else }}{{ .Content }}</s>"
    "{{ end }}{{ end }}",
], ["[INST]", "</s>"])
GEMMA = ChatStyle("Gemma", "<start_of_turn>", [
    "{{- range .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}{{ .Role }}{{ end }}\n"
    "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
], ["<end_of_turn>", "<start_of_turn>"])
STYLES = (CHATML, LLAMA3, GEMMA, INST)

PROBE_SYSTEM = "You answer in one short sentence."
PROBES = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And 3 + 3?"}],
    [{"role": "system", "content": PROBE_SYSTEM}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"}],
]


def _render_jinja(tokenizer, messages: list[dict[str, str]]) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that refuses a role (Gemma: no system turn) raises
        return None


def _strip_bos(text: str, tokenizer, adds_bos: bool) -> str:
    bos = tokenizer.bos_token
    if adds_bos and bos and text.startswith(bos):
        return text[len(bos):]  # the GGUF's add_bos_token puts it back in front
    return text


def _with_system(messages: list[dict[str, str]], system: str) -> list[dict[str, str]]:
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return list(messages)


def _ollama_messages(messages: list[dict[str, str]], system: str) -> list[dict[str, str]]:
    """What Ollama hands the template: the Modelfile's SYSTEM as the first message when the request has none."""
    return [{"Role": message["role"], "Content": message["content"]} for message in _with_system(messages, system)]


def _default_system(style: ChatStyle, tokenizer, adds_bos: bool) -> str:
    """The system prompt a template inserts on its own when a conversation has none (SmolLM2 does), else ''."""
    rendered = _render_jinja(tokenizer, PROBES[0])
    if rendered is None:
        return ""
    patterns = {"ChatML": r"<\|im_start\|>system\n(.*?)<\|im_end\|>",
                "Llama 3": r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>"}
    match = re.search(patterns.get(style.name, r"(?!)"), _strip_bos(rendered, tokenizer, adds_bos), re.S)
    return match.group(1) if match else ""


@dataclass
class OllamaTemplate:
    """A translated chat template and what the Modelfile needs besides it."""

    style: str
    template: str
    system: str  # the Modelfile's SYSTEM ('' for none)
    stops: list[str]
    checked: list[dict[str, Any]]  # per probe conversation: turns, equal, or why it was skipped


def translate_template(tokenizer, *, system_prompt: str = "", adds_bos: bool | None = None) -> OllamaTemplate:
    """The Go template reproducing `tokenizer`'s chat template on the probe conversations, with the SYSTEM line
    (the run's system prompt, else the default the template inserts) and the stop words; a one-line ModelError
    when the template is none we can translate."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("--ollama: the model has no chat template to translate — export without --ollama, or "
                         "train from an instruct model")
    if adds_bos is None:
        adds_bos = bool(getattr(tokenizer, "add_bos_token", False))
    sample = _render_jinja(tokenizer, PROBES[0]) or ""
    style = next((s for s in STYLES if s.marker in sample), None)
    if style is None:
        raise ModelError("--ollama: this chat template is none we can translate (ChatML, Llama 3, Mistral/Llama 2 "
                         "[INST], Gemma) — export without --ollama and write the Modelfile's TEMPLATE by hand")
    system = system_prompt or _default_system(style, tokenizer, adds_bos)
    reasons = []
    for candidate in style.candidates:
        checked, mismatch = [], None
        for probe in PROBES:
            # with a run's system prompt, the model trained on conversations that start with it
            expected = _render_jinja(tokenizer, _with_system(probe, system_prompt))
            if expected is None:
                checked.append({"turns": len(probe), "skipped": "the model's template refuses this conversation"})
                continue
            expected = _strip_bos(expected, tokenizer, adds_bos)
            got = render_go_template(candidate, {"Messages": _ollama_messages(probe, system)})
            checked.append({"turns": len(probe), "equal": got == expected})
            if got != expected:
                mismatch = _first_difference(expected, got)
                break
        if mismatch is None:
            eos = getattr(tokenizer, "eos_token", None)
            stops = [s for s in dict.fromkeys([*style.stops, *([eos] if eos else [])]) if s]
            return OllamaTemplate(style.name, candidate, system, stops, checked)
        reasons.append(mismatch)
    raise ModelError(f"--ollama: the {style.name} template could not be reproduced exactly ({reasons[0]}) — export "
                     "without --ollama, or write the Modelfile's TEMPLATE by hand")


def _first_difference(expected: str, got: str) -> str:
    index = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    return f"at character {index}: the model's template has {expected[index:index + 24]!r}, ours {got[index:index + 24]!r}"


def _quoted(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile_text(gguf_name: str, translated: OllamaTemplate, *, temperature: float | None = None) -> str:
    """The Modelfile: FROM the GGUF beside it, the TEMPLATE, SYSTEM when there is one, a stop per end-of-turn."""
    lines = [f"FROM ./{gguf_name}", f"TEMPLATE {_quoted(translated.template)}"]
    if translated.system:
        lines.append(f"SYSTEM {_quoted(translated.system)}")
    for stop in translated.stops:
        lines.append(f'PARAMETER stop "{stop}"')
    if temperature is not None:
        lines.append(f"PARAMETER temperature {temperature}")
    return "\n".join(lines) + "\n"
