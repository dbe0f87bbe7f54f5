"""A model's chat template, rendered as transformers' `apply_chat_template(messages,
add_generation_prompt=True)` renders it, and the rendered text as token ids.

Where the template comes from: the folder's `chat_template.jinja`, else `chat_template` in its
tokenizer_config.json (a string, or a list of named templates of which "default" is used). A
folder with neither whose tokenizer is Llama's (`<s>` / `</s>`) gets CodeLlama-Instruct's
format (DEFAULT_TEMPLATE); any other has no template, and chat is refused.

The environment is transformers': a sandboxed, immutable Jinja environment with trim_blocks and
lstrip_blocks, loop controls, a `{% generation %}` tag that renders its body, the `tojson` filter
without HTML escaping, `raise_exception`, `strftime_now`, and the template sees `messages`
(None-valued keys dropped), `add_generation_prompt`, `tools` (the request's, or None) and the tokenizer's named
special tokens (bos_token, eos_token, ...). The rendered text is tokenized without an added BOS,
special tokens written in it read as those tokens (as transformers reads them by default, also
inside message text), the rest as plain text.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.loader import read_folder_json
from engine.tokenizer import Tokenizer

from api import reasoning, tool_calls

TEMPLATE_FILE = "chat_template.jinja"
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Names a template sees that a request's own template options (chat_template_kwargs) may not replace.
RESERVED_NAMES = frozenset({"messages", "tools", "documents", "add_generation_prompt", *NAMED_SPECIAL_TOKENS})

# CodeLlama-Instruct (Llama 2 chat): <s>[INST] {system block}{user} [/INST] {assistant} </s><s>[INST] ...
# The system message, when first, goes into the first user turn as "<<SYS>>\n{system}\n<</SYS>>\n\n";
# each message's content is stripped; user and assistant turns must alternate and end with a user turn.
DEFAULT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- if not turns or turns[-1]['role'] != 'user' -%}"
    "{{ raise_exception('the last message must be a user message') }}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] not in ('user', 'assistant') -%}"
    "{{ raise_exception('roles must be user or assistant after an optional first system message') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('conversation roles must alternate user/assistant/user/...') }}{%- endif -%}"
    "{%- set content = message['content'] -%}"
    "{%- if loop.first and system is not none -%}"
    "{%- set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + content | trim + ' ' + eos_token }}{%- endif -%}"
    "{%- endfor -%}")


class ChatTemplateError(ValueError):
    """The template refused the messages (its raise_exception) or failed on them."""


class _GenerationTag(jinja2.ext.Extension):
    """transformers' `{% generation %}...{% endgeneration %}` (marks assistant text): renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace() without underscore names (no way towards Python's internals)."""

    def __init__(*args, **kwargs):
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"a namespace cannot hold the underscore name {name!r}")


def compile_template(source: str) -> jinja2.Template:
    """Raises jinja2.TemplateSyntaxError for a template that does not compile."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    return env.from_string(source)


DEFAULT_ORIGIN = "default (CodeLlama-Instruct)"


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    origin: str  # where it came from: a file name, or DEFAULT_ORIGIN
    special_tokens: dict[str, str]  # bos_token, eos_token, ... as the template sees them
    special_ids: dict[str, int]  # special token text -> id, read as that token in the rendered text
    _compiled: jinja2.Template | None = field(repr=False, compare=False, default=None)
    _split: re.Pattern | None = field(repr=False, compare=False, default=None)
    _think_tags: "reasoning.Tags | None" = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", compile_template(self.source))
        object.__setattr__(self, "_think_tags", reasoning.tags_of(self.source))  # read per request: found once
        pattern = "|".join(re.escape(t) for t in sorted(self.special_ids, key=len, reverse=True))
        object.__setattr__(self, "_split", re.compile(f"({pattern})") if pattern else None)

    @property
    def checkpoints_own(self) -> bool:
        """Whether the checkpoint ships this template (else it is the CodeLlama-Instruct default)."""
        return self.origin != DEFAULT_ORIGIN

    @property
    def tool_format(self) -> "tool_calls.Format | None":
        """How the template's model writes tool calls (api/tool_calls.py); None: no format this
        server reads."""
        return tool_calls.format_of(self.source)

    @property
    def thinks(self) -> bool:
        """Whether the template's model writes its reasoning in think blocks (api/reasoning.py)."""
        return self.think_tags is not None

    @property
    def think_tags(self) -> "reasoning.Tags | None":
        """The tags of the template's model's think blocks (None: it writes none)."""
        return self._think_tags

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True,
               tools: Sequence[dict] | None = None, options: dict[str, Any] | None = None) -> str:
        """The prompt text; ChatTemplateError when the template refuses the messages. `options`:
        further names the template reads (enable_thinking, ...; none of RESERVED_NAMES)."""
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return self._render(chat, add_generation_prompt, tools, options)
        except ChatTemplateError as refused:
            # Many templates (CodeLlama-Instruct's, Mistral's) take a system message only first,
            # while agents send more within the conversation (Claude Code's reminders): those go
            # into the user turn after them where that is what the template refused.
            folded = fold_late_system(chat)
            if folded is None:
                raise
            try:
                return self._render(folded, add_generation_prompt, tools, options)
            except ChatTemplateError:
                raise refused from None

    def _render(self, chat: list[dict], add_generation_prompt: bool, tools: Sequence[dict] | None,
                options: dict[str, Any] | None) -> str:
        try:
            return self._compiled.render(**(options or {}), messages=chat, tools=list(tools) if tools else None,
                                         documents=None, add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except jinja2.exceptions.TemplateError as e:  # raise_exception, undefined names, sandbox refusals
            raise ChatTemplateError(str(e)) from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise ChatTemplateError(f"the chat template failed on these messages: {e}") from None

    def encode(self, tokenizer: Tokenizer, text: str) -> list[int]:
        """The rendered text's ids: special tokens written in it as themselves, no BOS added."""
        if self._split is None:
            return tokenizer.encode(text, add_bos=False)
        return tokenizer.encode_marked(text, self._split, self.special_ids)

    def prompt_ids(self, tokenizer: Tokenizer, messages: Sequence[dict],
                   tools: Sequence[dict] | None = None, opening: str = "") -> list[int]:
        """The prompt's ids; `opening`: the start of the answer, written for the model."""
        return self.prompt(tokenizer, messages, tools, opening)[1]

    def prompt(self, tokenizer: Tokenizer, messages: Sequence[dict], tools: Sequence[dict] | None = None,
               opening: str = "", options: dict[str, Any] | None = None) -> tuple[str, list[int]]:
        """The prompt's text and ids (prompt_ids; `options` as for render)."""
        text = self.render(messages, tools=tools, options=options) + opening
        return text, self.encode(tokenizer, text)


def fold_late_system(messages: Sequence[dict]) -> list[dict] | None:
    """The messages with every system message after the conversation's start joined to the text
    of the next user turn, before it (to the last user turn, after it, where none follows), so
    that only the leading system messages remain; None where there is none to fold or one cannot
    be (a content that is not text, no user turn to take it)."""
    start = next((i for i, m in enumerate(messages) if m.get("role") != "system"), len(messages))
    if not any(m.get("role") == "system" for m in messages[start:]):
        return None
    out, pending = list(messages[:start]), []
    for m in messages[start:]:
        role, content = m.get("role"), m.get("content")
        if role == "system" or (role == "user" and pending):
            if not isinstance(content, str):
                return None
            if role == "system":
                pending.append(content)
                continue
            m, pending = {**m, "content": "\n\n".join([*pending, content])}, []
        out.append(m)
    if pending:
        last = next((i for i in range(len(out) - 1, start - 1, -1) if out[i].get("role") == "user"), None)
        if last is None or not isinstance(out[last].get("content"), str):
            return None
        out[last] = {**out[last], "content": "\n\n".join([out[last]["content"], *pending])}
    return out


def load_chat_template(tokenizer: Tokenizer) -> ChatTemplate | None:
    """The chat template of the tokenizer's folder, the CodeLlama-Instruct default for a Llama
    tokenizer without one, else None."""
    folder = tokenizer.path
    config = read_folder_json(folder, "tokenizer_config.json") or {}
    named = _named_special_tokens(folder, config)
    specials = _special_ids(tokenizer, folder, config, named)
    source, origin = _template_source(folder, config)
    if source is None:
        if not _is_llama_tokenizer(tokenizer):
            return None
        named = {**named, "bos_token": "<s>", "eos_token": "</s>"}
        specials = {**specials, "<s>": tokenizer.token_id("<s>"), "</s>": tokenizer.token_id("</s>")}
        source, origin = DEFAULT_TEMPLATE, DEFAULT_ORIGIN
    return ChatTemplate(source, origin, named, specials)


def _template_source(folder: str, config: dict) -> tuple[str | None, str]:
    file = os.path.join(folder, TEMPLATE_FILE)
    if os.path.isfile(file):
        with open(file, encoding="utf-8") as f:
            return f.read(), TEMPLATE_FILE
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses "default" when no tools are given
        by_name = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = by_name.get("default")
    return (template, "tokenizer_config.json") if isinstance(template, str) and template else (None, "")


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _named_special_tokens(folder: str, config: dict) -> dict[str, str]:
    """bos_token, eos_token, ... from tokenizer_config.json, then special_tokens_map.json."""
    sources = (config, read_folder_json(folder, "special_tokens_map.json") or {})
    named: dict[str, str] = {}
    for name in NAMED_SPECIAL_TOKENS:
        for source in sources:
            text = _token_text(source.get(name))
            if text is not None:
                named[name] = text
                break
    return named


def _special_ids(tokenizer: Tokenizer, folder: str, config: dict, named: dict[str, str]) -> dict[str, int]:
    """Every special token's text that the tokenizer knows, with its id: the named ones, the
    additional ones, and tokenizer.json's added tokens marked special."""
    texts = list(named.values())
    for key in ("additional_special_tokens", "extra_special_tokens"):
        extra = config.get(key) or (read_folder_json(folder, "special_tokens_map.json") or {}).get(key) or []
        texts += [t for t in map(_token_text, extra if isinstance(extra, list) else []) if t]
    added = (read_folder_json(folder, "tokenizer.json") or {}).get("added_tokens") or []
    texts += [t["content"] for t in added if isinstance(t, dict) and t.get("special") and t.get("content")]
    ids = {}
    for text in texts:
        i = tokenizer.token_id(text)
        if i is not None:
            ids[text] = i
    return ids


def _is_llama_tokenizer(tokenizer: Tokenizer) -> bool:
    bos, eos = tokenizer.token_id("<s>"), tokenizer.token_id("</s>")
    return bos is not None and bos == tokenizer.bos_id and eos is not None and eos in tokenizer.eos_ids
