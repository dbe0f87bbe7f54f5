"""Chat templates rendered as transformers renders them (checked against its own
apply_chat_template), and CodeLlama-Instruct's format for a Llama tokenizer without one."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from api.chat_template import DEFAULT_TEMPLATE, ChatTemplateError, load_chat_template
from engine.tokenizer import Tokenizer
from tests.conftest import make_byte_bpe_tokenizer

# A ChatML template (Qwen's turn format) that uses what real templates use: a default system
# message, namespace, loop controls, tojson, raise_exception, strftime_now, {% generation %}.
CHATML = (
    "{%- set ns = namespace(system=false) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'system' -%}{%- set ns.system = true -%}{%- break -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if not ns.system -%}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{%- endif -%}\n"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{% if message['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ message['content'] }}"
    "{% endgeneration %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{% if message.get('name') %} (from {{ message['name'] | tojson }}){% endif %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    # Written over lines as templates are: trim_blocks and lstrip_blocks decide what these leave.
    "{% if add_generation_prompt %}\n    {% if true %}\n<|im_start|>assistant\n    {% endif %}\n{% endif %}"
    "{# {{ strftime_now('%Y') }} #}")
MESSAGES = [
    {"role": "user", "content": "Write a function that adds two numbers: «é ✓ 漢»", "name": "ana"},
    {"role": "assistant", "content": "def add(a, b):\n    return a + b"},
    {"role": "user", "content": "  Now with <|im_end|> types.  "},
]


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("chatml"))
    make_byte_bpe_tokenizer(d, "qwen")
    with open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config["chat_template"] = CHATML
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False)
    return d


@pytest.mark.parametrize("messages", [MESSAGES, [{"role": "system", "content": "Be terse."}] + MESSAGES[:1]])
def test_renders_and_tokenizes_as_transformers(chatml_dir, messages):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(chatml_dir)
    template = load_chat_template(Tokenizer(chatml_dir))
    assert template is not None and template.origin == "tokenizer_config.json"
    text = template.render(messages)
    assert text == hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert template.prompt_ids(Tokenizer(chatml_dir), messages) == expected["input_ids"]


def test_template_errors_and_sources(chatml_dir, tmp_path):
    template = load_chat_template(Tokenizer(chatml_dir))
    with pytest.raises(ChatTemplateError, match="unknown role tool"):
        template.render([{"role": "tool", "content": "x"}])
    # chat_template.jinja takes precedence over tokenizer_config.json, as in transformers.
    folder = tmp_path / "jinja"
    shutil.copytree(chatml_dir, folder)
    (folder / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    own = load_chat_template(Tokenizer(str(folder)))
    assert own.origin == "chat_template.jinja" and own.render(MESSAGES[:1]) == f"[{MESSAGES[0]['content']}]"
    # A list of named templates: "default" is used.
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink()
    assert load_chat_template(Tokenizer(str(folder))).render(MESSAGES) == "D"


def test_no_template_and_not_llama_means_none(tmp_path):
    folder = make_byte_bpe_tokenizer(str(tmp_path / "plain"), "starcoder")
    assert load_chat_template(Tokenizer(folder)) is None


def test_sandbox_refuses_python_internals(chatml_dir):
    template = load_chat_template(Tokenizer(chatml_dir))
    evil = type(template)("{{ messages.__class__.__mro__ }}", "test", {}, {})
    with pytest.raises(ChatTemplateError):
        evil.render(MESSAGES)
    sneaky = type(template)("{% set ns = namespace(_x=1) %}{{ ns._x }}", "test", {}, {})
    with pytest.raises(ChatTemplateError):
        sneaky.render(MESSAGES)


def test_codellama_instruct_default(tiny_model_dir):
    """A Llama tokenizer without a template gets Meta's CodeLlama-Instruct (Llama 2 chat) format."""
    tok = Tokenizer(tiny_model_dir)
    template = load_chat_template(tok)
    assert template.source == DEFAULT_TEMPLATE and template.origin.startswith("default")
    messages = [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": " Add two numbers. "},
                {"role": "assistant", "content": " def add(a, b): return a + b "},
                {"role": "user", "content": "Now three"}]
    text = template.render(messages)
    assert text == ("<s>[INST] <<SYS>>\nAnswer in Python.\n<</SYS>>\n\n Add two numbers. [/INST] "
                    "def add(a, b): return a + b </s><s>[INST] Now three [/INST]")
    # Meta's reference tokenization: each turn [BOS] + tokens of "[INST] {user} [/INST] {answer} " [+ EOS].
    first = "[INST] <<SYS>>\nAnswer in Python.\n<</SYS>>\n\n Add two numbers. [/INST] def add(a, b): return a + b "
    reference = ([tok.bos_id] + tok.encode(first, add_bos=False) + [tok.eos_id]
                 + [tok.bos_id] + tok.encode("[INST] Now three [/INST]", add_bos=False))
    assert template.prompt_ids(tok, messages) == reference
    for bad in ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]):
        with pytest.raises(ChatTemplateError):
            template.render(bad)


def test_a_template_that_takes_a_system_message_only_first_gets_later_ones_in_the_next_user_turn(tiny_model_dir):
    """CodeLlama-Instruct's template refuses a system message within the conversation (agents
    send them: Claude Code's reminders); it gets each in the text of the user turn after it, or of
    the last user turn where none follows. A template that takes them keeps them where they stand."""
    template = load_chat_template(Tokenizer(tiny_model_dir))
    messages = [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "Add two numbers."},
                {"role": "assistant", "content": "def add(a, b): return a + b"},
                {"role": "system", "content": "Be brief."}, {"role": "system", "content": "No tests."},
                {"role": "user", "content": "Now three."}]
    assert template.render(messages) == template.render(
        messages[:3] + [{"role": "user", "content": "Be brief.\n\nNo tests.\n\nNow three."}])
    last = messages[:3] + [messages[5], messages[3]]
    assert template.render(last) == template.render(messages[:3] + [{"role": "user", "content": "Now three.\n\nBe brief."}])
    with pytest.raises(ChatTemplateError, match="optional first system"):  # folding cannot mend the rest: its refusal
        template.render(messages[:2] + [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])
    chatml = load_chat_template(Tokenizer(_chatml(tiny_model_dir)))
    assert "<|im_start|>system\nBe brief.<|im_end|>" in chatml.render(messages)


def _chatml(tiny_model_dir: str) -> str:
    """The tiny model's tokenizer folder with the ChatML template above."""
    folder = os.path.join(os.path.dirname(tiny_model_dir), "chatml_for_late_system")
    if not os.path.isdir(folder):
        shutil.copytree(tiny_model_dir, folder)
        path = os.path.join(folder, "tokenizer_config.json")
        config = json.load(open(path)) if os.path.exists(path) else {}
        json.dump({**config, "chat_template": CHATML}, open(path, "w"))
    return folder
