"""Chat formatting: a conversation (a list of {"role", "content"} messages) -> the prompt text
an instruction-tuned model was trained on.

A model file says how its conversations look with a Jinja template (the GGUF key
`tokenizer.chat_template`; `tokenizer_config.json`'s `chat_template` on the Hugging Face Hub).
This module renders it as transformers' `apply_chat_template` does: Jinja2 in an immutable
sandbox (a template cannot reach Python internals nor change its arguments), `trim_blocks` and
`lstrip_blocks`, the loop controls (`{% break %}`, `{% continue %}`), the globals
`raise_exception(message)` (-> TemplateError) and `strftime_now(format)`, a `tojson` filter that
keeps non-ASCII text as it is, and the variables `messages`, `add_generation_prompt`,
`bos_token`, `eos_token` (the model's own, as text), `tools` and `documents` (None) plus any
keyword given to `render`.

SmolLM2-Instruct uses ChatML with a default system prompt. Its template, indented here for
reading (the real one has no white space between the tags):

    {% for message in messages %}
      {% if loop.first and messages[0]['role'] != 'system' %}
        {{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}
      {% endif %}
      {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}
    {% endfor %}
    {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}

    >>> apply_chat_template([{"role": "user", "content": "What is gravity?"}])
    '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n<|im_start|>user\\nWhat is gravity?<|im_end|>\\n<|im_start|>assistant\\n'

Which template (`resolve_template`): the model file's own, or one chosen by the caller — a
built-in name (BUILTIN_TEMPLATES: "chatml", "smollm2", "llama3", "phi3", "gemma"), a Jinja
string or the path of a .jinja file. A model file without a template cannot chat until one is
chosen (MissingTemplateError says how). The model's answer ends with an end-of-turn token or
EOS: generation stops there (`stop_token_ids`).
"""
from __future__ import annotations

import datetime
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Dict, List, Optional, Union

import jinja2
import jinja2.ext
import jinja2.sandbox

__all__ = ["apply_chat_template", "encode_chat", "stop_token_ids", "resolve_template",
           "normalize_messages", "parse_chat_template", "ChatTemplate", "TemplateError",
           "MissingTemplateError", "UnsupportedTemplateError", "BUILTIN_TEMPLATES",
           "SMOLLM2_CHAT_TEMPLATE", "ROLES", "END_OF_TURN_TOKENS", "IM_START", "IM_END"]

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# tokenizer.chat_template of SmolLM2-135M-Instruct's GGUF, verbatim.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")

# Plain ChatML: SmolLM2's without the default system prompt.
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")

# The published templates (tokenizer_config.json's chat_template), verbatim: Meta-Llama-3-8B-
# Instruct, Phi-3-mini-4k-instruct, and Gemma (gemma-1.1-*-it, gemma-2-*-it: no system role).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + "
    "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + "
    "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + "
    "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{'<start_of_turn>model\n'}}{% endif %}")

BUILTIN_TEMPLATES: Dict[str, str] = {
    "chatml": CHATML_CHAT_TEMPLATE,
    "smollm2": SMOLLM2_CHAT_TEMPLATE,
    "llama3": LLAMA3_CHAT_TEMPLATE,
    "phi3": PHI3_CHAT_TEMPLATE,
    "gemma": GEMMA_CHAT_TEMPLATE,
}

ROLES = ("system", "user", "assistant", "tool", "developer")

# Tokens that end an assistant turn in the common template families (ChatML, Llama 3, Phi-3,
# Gemma, GPT-2-style end of text, Llama 3.1's end of a tool-calling message).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                      "<|eom_id|>")


class TemplateError(ValueError):
    """A chat template that cannot be compiled or rendered, or that refuses the conversation
    (its raise_exception), or a template choice that names nothing."""


# Old name: every template error used to be "unsupported".
UnsupportedTemplateError = TemplateError


class MissingTemplateError(TemplateError):
    """The model file has no chat template and none was chosen."""

    def __init__(self, message: Optional[str] = None):
        super().__init__(message or (
            "the model file has no chat template (no tokenizer.chat_template in its metadata): "
            "choose one with template=\"chatml\" (Python, e.g. load_model(..., "
            "template=\"chatml\")) or --template chatml (CLI), or give a Jinja template string "
            "or the path of a .jinja file; built-in names: " + ", ".join(BUILTIN_TEMPLATES)))


# ---- the Jinja environment (as transformers' _compile_jinja_template) ---------------------------

def _raise_exception(message):
    raise TemplateError(message)


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters and is meant for HTML; transformers replaces it.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@functools.lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


# Errors a template's own code may cause while rendering (a Jinja error, or a Python one such
# as "abc" + 1 or 1 / 0); TemplateError (raise_exception) is a ValueError.
_RENDER_ERRORS = (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError,
                  AttributeError)


class ChatTemplate:
    """A compiled chat template. `source`: the Jinja text; `bos_token` / `eos_token`: the
    model's BOS and EOS as text (the template's `bos_token` and `eos_token` variables); `name`:
    for messages ("chatml", a file name...). A syntax error raises TemplateError here, naming
    the line."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "",
                 name: Optional[str] = None):
        if not isinstance(source, str):
            raise TypeError(f"the chat template must be a str, got {type(source).__name__}")
        for what, token in (("bos_token", bos_token), ("eos_token", eos_token)):
            if not isinstance(token, str):
                raise TypeError(f"{what} must be a str, got {type(token).__name__}")
        self.source, self.bos_token, self.eos_token, self.name = source, bos_token, eos_token, name
        try:
            self._template = _compile(source)
        except jinja2.TemplateSyntaxError as e:
            lines = source.splitlines()
            line = lines[e.lineno - 1] if e.lineno and 0 < e.lineno <= len(lines) else ""
            near = f" (line {e.lineno}: {line[:120]!r})" if line else ""
            raise TemplateError(f"{self._label()}: syntax error on line {e.lineno}: {e.message}"
                                f"{near}") from None

    def _label(self) -> str:
        return f"chat template {self.name!r}" if self.name else "chat template"

    def __repr__(self) -> str:
        if self.name:
            return f"ChatTemplate(name={self.name!r})"
        head = self.source if len(self.source) <= 60 else self.source[:57] + "..."
        return f"ChatTemplate({head!r})"

    def render(self, messages, add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text for `messages` (see normalize_messages). kwargs: more template
        variables (e.g. tools=[...], or bos_token="" to leave BOS out of the text)."""
        messages = normalize_messages(messages)
        variables = {"bos_token": self.bos_token, "eos_token": self.eos_token, "tools": None,
                     "documents": None}
        variables.update(kwargs)
        variables.update(messages=messages, add_generation_prompt=add_generation_prompt)
        try:
            return self._template.render(**variables)
        except _RENDER_ERRORS as e:
            if isinstance(e, jinja2.TemplateError):
                message = e.message or str(e)
            else:
                message = str(e) if isinstance(e, TemplateError) else f"{type(e).__name__}: {e}"
            raise TemplateError(f"{self._label()}: {message}") from None


def parse_chat_template(template: str) -> ChatTemplate:
    """ChatTemplate(template): kept for old callers (it used to recognize ChatML only)."""
    if not isinstance(template, str):
        raise TypeError(f"the chat template must be a str, got {type(template).__name__}")
    return ChatTemplate(template)


# ---- which template ------------------------------------------------------------------------------

def _token_text(encoding, attribute: str) -> str:
    """The text of the encoding's BOS / EOS ("" when the encoding has none)."""
    token_id = getattr(encoding, attribute, None) if encoding is not None else None
    if token_id is None:
        return ""
    if hasattr(encoding, "decode_single_token_bytes"):
        return encoding.decode_single_token_bytes(token_id).decode("utf-8", "replace")
    return encoding.decode([token_id])


def _has_jinja(text: str) -> bool:
    return "{%" in text or "{{" in text


def resolve_template(template=None, model_template: Optional[str] = None,
                     encoding=None) -> ChatTemplate:
    """The ChatTemplate to chat with. template: None (the model file's own, `model_template`;
    MissingTemplateError when it has none), a built-in name (BUILTIN_TEMPLATES), a Jinja source
    string, a path to a template file, or a ChatTemplate (returned as it is). The template's
    bos_token / eos_token come from `encoding` (its bos_token_id / eos_token_id)."""
    if isinstance(template, ChatTemplate):
        return template
    bos, eos = _token_text(encoding, "bos_token_id"), _token_text(encoding, "eos_token_id")
    if template is None:
        if model_template is None or (isinstance(model_template, str) and not model_template.strip()):
            raise MissingTemplateError()
        return ChatTemplate(model_template, bos, eos)
    if isinstance(template, os.PathLike):
        template = os.fspath(template)
    if not isinstance(template, str):
        raise TypeError("the chat template must be a str (a built-in name, Jinja source or a "
                        "file's path), a path, a ChatTemplate or None, got "
                        f"{type(template).__name__}")
    key = template.strip().lower()
    if key in BUILTIN_TEMPLATES:
        return ChatTemplate(BUILTIN_TEMPLATES[key], bos, eos, name=key)
    if _has_jinja(template):
        return ChatTemplate(template, bos, eos)
    if "\n" not in template and os.path.isfile(template):
        with open(template, encoding="utf-8") as f:
            source = f.read()
        return ChatTemplate(source, bos, eos, name=os.path.basename(template))
    raise TemplateError(
        f"unknown chat template {template!r}: not a built-in name ("
        + ", ".join(BUILTIN_TEMPLATES) + "), not an existing file, and no Jinja syntax "
        "('{{' or '{%')")


# ---- messages ------------------------------------------------------------------------------------

def _content_text(i: int, role: str, content) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        if role == "assistant":  # an assistant turn that only calls tools
            return ""
        raise TypeError(f"message {i}: 'content' must be a str (None only for an assistant "
                        "message), got NoneType")
    if isinstance(content, (list, tuple)):  # OpenAI-style content parts
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping):
                raise TypeError(f"message {i}: content part {j} must be a dict like "
                                f"{{'type': 'text', 'text': ...}}, got {type(part).__name__}")
            kind = part.get("type", "text" if "text" in part else None)
            if kind != "text":
                raise ValueError(f"message {i}: content part {j} has type {kind!r}: only text "
                                 "parts ({'type': 'text', 'text': ...}) are supported")
            text = part.get("text")
            if not isinstance(text, str):
                raise TypeError(f"message {i}: content part {j}: 'text' must be a str, got "
                                f"{type(text).__name__}")
            texts.append(text)
        return "".join(texts)
    raise TypeError(f"message {i}: 'content' must be a str or a list of text parts, got "
                    f"{type(content).__name__}")


def normalize_messages(messages) -> List[Dict[str, Any]]:
    """The messages as the templates expect them: a new list of new dicts whose 'content' is
    a str (content parts joined, None -> "" for an assistant message); other keys (name,
    tool_calls...) pass through. TypeError / ValueError name the bad message."""
    if isinstance(messages, (str, bytes, bytearray, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': str, 'content': str} dicts, got "
                        f"{type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: a conversation needs at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got "
                            f"{type(m).__name__}")
        if "role" not in m:
            raise ValueError(f"message {i} has no 'role'")
        role = m["role"]
        if not isinstance(role, str):
            raise TypeError(f"message {i}: 'role' must be a str, got {type(role).__name__}")
        if role not in ROLES:
            raise ValueError(f"message {i}: unknown role {role!r} (the roles are "
                             + ", ".join(ROLES) + ")")
        if "content" not in m and role != "assistant":
            raise ValueError(f"message {i} has no 'content'")
        message = dict(m)
        message["content"] = _content_text(i, role, m.get("content"))
        out.append(message)
    return out


# ---- rendering and tokens ------------------------------------------------------------------------

def apply_chat_template(messages, add_generation_prompt: bool = True,
                        template=None) -> str:
    """The prompt text for `messages`, as transformers' `apply_chat_template(messages,
    add_generation_prompt=..., tokenize=False)`. template: anything resolve_template takes
    (default: SmolLM2's); BOS and EOS are "" here (encode_chat knows the model's)."""
    chosen = resolve_template("smollm2" if template is None else template)
    return chosen.render(messages, add_generation_prompt)


def encode_chat(encoding, messages, add_generation_prompt: bool = True,
                template=None) -> List[int]:
    """The prompt's token ids, as transformers' `apply_chat_template(..., tokenize=True)`: the
    text rendered with the encoding's BOS / EOS, encoded with every special token allowed (so
    `<|im_start|>` becomes its id, also where a message's content contains it, as in
    transformers), and BOS in front when the encoding says the model wants it and the text does
    not start with it already. template: as apply_chat_template."""
    chosen = resolve_template("smollm2" if template is None else template, encoding=encoding)
    text = chosen.render(messages, add_generation_prompt)
    ids = encoding.encode(text, allowed_special="all")
    bos_id = getattr(encoding, "bos_token_id", None)
    if getattr(encoding, "add_bos_token", False) and bos_id is not None:
        bos = _token_text(encoding, "bos_token_id")
        if not (bos and text.startswith(bos)):
            ids.insert(0, bos_id)
    return ids


def stop_token_ids(encoding, template: Union[None, str, ChatTemplate] = None) -> List[int]:
    """The ids that end the assistant's turn, sorted: EOS and every special token of the
    encoding in END_OF_TURN_TOKENS (<|im_end|>, <|eot_id|>, <|end|>, <end_of_turn>,
    <|endoftext|>, <|eom_id|>). `template` is accepted for symmetry with encode_chat; the set
    depends on the vocabulary only."""
    del template
    ids = set()
    specials = getattr(encoding, "special_tokens_set", set())
    for token in END_OF_TURN_TOKENS:
        if token in specials:
            ids.add(encoding.encode_single_token(token))
    if getattr(encoding, "eos_token_id", None) is not None:
        ids.add(encoding.eos_token_id)
    return sorted(ids)
