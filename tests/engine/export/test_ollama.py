"""The Modelfile's Go template renders each family's sample conversations exactly as the model's own chat
template does; templates we cannot translate are refused in one line."""

from __future__ import annotations

import pytest

from engine.errors import ModelError
from engine.export.ollama import modelfile_text, render_go_template, translate_template
from tests.small_models import LLAMA2_TEMPLATE, byte_level_tokenizer

LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
           "message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + "
           "eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
           "{% endfor %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
         "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + "
         "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
         "{{'<start_of_turn>model\n'}}{% endif %}")
FAMILIES = {  # template, bos, eos, style, how many probe conversations the template accepts
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "Llama 3", 3),
    "llama2": (LLAMA2_TEMPLATE, "<s>", "</s>", "Mistral / Llama 2 [INST]", 3),
    "mistral": (MISTRAL, "<s>", "</s>", "Mistral / Llama 2 [INST]", 2),
    "gemma": (GEMMA, "<bos>", "<eos>", "Gemma", 2),
}


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer):
    return byte_level_tokenizer(smollm_tokenizer.chat_template)


def test_chatml_with_the_default_system_prompt_becomes_system(smollm_tokenizer):
    translated = translate_template(smollm_tokenizer)
    assert translated.style == "ChatML" and all(probe["equal"] for probe in translated.checked)
    assert translated.system.startswith("You are a helpful AI assistant named SmolLM")
    assert translate_template(smollm_tokenizer, system_prompt="Answer as ANSWER: x").system == "Answer as ANSWER: x"
    text = modelfile_text("demo-q8_0.gguf", translated)
    assert text.splitlines()[0] == "FROM ./demo-q8_0.gguf" and 'PARAMETER stop "<|im_end|>"' in text


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_renders_like_the_models_template(tokenizer, family):
    template, bos, eos, style, accepted = FAMILIES[family]
    tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token = template, bos, eos
    translated = translate_template(tokenizer, adds_bos=True)
    assert translated.style == style
    assert sum(probe.get("equal", False) for probe in translated.checked) == accepted
    conversation = [{"Role": "user", "Content": "Hi"}, {"Role": "assistant", "Content": "Hello."},
                    {"Role": "user", "Content": "Bye"}]
    expected = tokenizer.apply_chat_template([{"role": m["Role"].lower(), "content": m["Content"]}
                                              for m in conversation], tokenize=False, add_generation_prompt=True)
    assert render_go_template(translated.template, {"Messages": conversation}) == expected.removeprefix(bos)


def test_untranslatable_templates_are_refused(tokenizer):
    tokenizer.chat_template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ModelError, match="none we can translate"):
        translate_template(tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] | upper }}\n{{ m['content'] }}"
                               "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
    with pytest.raises(ModelError, match="could not be reproduced exactly"):
        translate_template(tokenizer)


def test_the_go_template_subset():
    template = '{{- range $i, $m := .Messages }}{{ if eq .Role "user" }}U{{ $i }}:{{ .Content }}\n' \
               '{{- else if ne .Role "system" }} A:{{ .Content }}{{ else }}S{{ end }}\n{{ end }}end'
    messages = [{"Role": "system", "Content": "s"}, {"Role": "user", "Content": "q"},
                {"Role": "assistant", "Content": "a"}]
    assert render_go_template(template, {"Messages": messages}) == "S\nU1:q\n A:a\nend"
