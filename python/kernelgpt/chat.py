"""Chat formatting: a conversation (a list of {"role", "content"} messages) -> the prompt text
an instruction-tuned model was trained on.

SmolLM2-Instruct uses ChatML. Its GGUF stores the format as a Jinja template
(`tokenizer.chat_template`), which transformers renders in `apply_chat_template`:

    {% for message in messages %}
      {% if loop.first and messages[0]['role'] != 'system' %}
        {{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}
      {% endif %}
      {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}
    {% endfor %}
    {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}

(indented here for reading; the real template has no white space between the tags). Rather
than embed a Jinja engine, this module recognizes that family of templates (ChatML with or
without a default system prompt, whose text it reads out of the template) and renders it with
plain string operations; any other template raises UnsupportedTemplateError, never a wrong
prompt. The model's answer ends with `<|im_end|>`: generation stops there (`stop_token_ids`).

    >>> apply_chat_template([{"role": "user", "content": "What is gravity?"}])
    '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n<|im_start|>user\\nWhat is gravity?<|im_end|>\\n<|im_start|>assistant\\n'
"""
from __future__ import annotations

import re
from typing import List, Mapping, Optional, Sequence

__all__ = ["apply_chat_template", "encode_chat", "stop_token_ids", "parse_chat_template",
           "ChatTemplate", "UnsupportedTemplateError", "SMOLLM2_CHAT_TEMPLATE", "IM_START",
           "IM_END"]

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# tokenizer.chat_template of SmolLM2-135M-Instruct's GGUF, verbatim.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")

# The template family: tolerant of white space inside the Jinja tags ({{ x }} or {{x}}), of
# either quote character and of a newline written as "\n" in a string literal; strict about
# everything outside the tags (any text there would be output). Group "system" is the default
# system prompt (absent in plain ChatML).
_NL = r"(?:\n|\\n)"


def _quoted(name: str, body: str) -> str:
    """A Jinja string literal holding `body` (a regex), in either quote character."""
    return rf"(?P<{name}>['\"]){body}(?P={name})"


_TEMPLATE = re.compile(
    r"\A\{%-?\s*for message in messages\s*-?%\}"
    r"(?:\{%-?\s*if loop\.first and messages\[0\]\[" + _quoted("q1", "role") + r"\]\s*!=\s*" +
    _quoted("q2", "system") + r"\s*-?%\}"
    r"\{\{-?\s*" + _quoted("q3", r"<\|im_start\|>system" + _NL +
                           r"(?P<system>[^'\"\\{}]*)<\|im_end\|>" + _NL) + r"\s*-?\}\}"
    r"\{%-?\s*endif\s*-?%\})?"
    r"\{\{-?\s*" + _quoted("q4", r"<\|im_start\|>") + r"\s*\+\s*message\[" + _quoted("q5", "role") +
    r"\]\s*\+\s*" + _quoted("q6", _NL) + r"\s*\+\s*message\[" + _quoted("q7", "content") +
    r"\]\s*\+\s*" + _quoted("q8", r"<\|im_end\|>") + r"\s*\+\s*" + _quoted("q9", _NL) +
    r"\s*-?\}\}\{%-?\s*endfor\s*-?%\}"
    r"\{%-?\s*if add_generation_prompt\s*-?%\}"
    r"\{\{-?\s*" + _quoted("q10", r"<\|im_start\|>assistant" + _NL) + r"\s*-?\}\}"
    r"\{%-?\s*endif\s*-?%\}\Z")


class UnsupportedTemplateError(ValueError):
    """The chat template is not one this module can render exactly."""


class ChatTemplate:
    """A recognized ChatML template: `default_system` is the system prompt added when a
    conversation does not start with a system message (None: nothing is added)."""

    def __init__(self, default_system: Optional[str]):
        self.default_system = default_system

    def __repr__(self) -> str:
        return f"ChatTemplate(default_system={self.default_system!r})"

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        messages = _check_messages(messages)
        parts: List[str] = []
        if messages and messages[0]["role"] != "system" and self.default_system is not None:
            parts.append(f"{IM_START}system\n{self.default_system}{IM_END}\n")
        for m in messages:
            parts.append(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n")
        if add_generation_prompt:
            parts.append(f"{IM_START}assistant\n")
        return "".join(parts)


def parse_chat_template(template: str) -> ChatTemplate:
    """Recognizes a ChatML template (SmolLM2's, or the same without a default system prompt);
    raises UnsupportedTemplateError for anything else."""
    if not isinstance(template, str):
        raise TypeError(f"the chat template must be a str, got {type(template).__name__}")
    match = _TEMPLATE.match(template)
    if match is None:
        raise UnsupportedTemplateError(
            "unsupported chat template: kernelgpt renders ChatML templates of the form "
            "{% for message in messages %}...'<|im_start|>' + message['role'] + '\\n' + "
            "message['content'] + '<|im_end|>' + '\\n'...{% endfor %}{% if "
            "add_generation_prompt %}...'<|im_start|>assistant\\n'...{% endif %} (optionally with "
            "a default system prompt, as SmolLM2's); this one begins "
            f"{template[:120]!r}")
    return ChatTemplate(match.group("system"))


def _check_messages(messages) -> List[Mapping[str, str]]:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': str, 'content': str} dicts, got "
                        f"{type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got "
                            f"{type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise ValueError(f"message {i} has no {key!r}")
            if not isinstance(m[key], str):
                raise TypeError(f"message {i}: {key!r} must be a str, got {type(m[key]).__name__}")
    return list(messages)


def apply_chat_template(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True,
                        template: Optional[str] = None) -> str:
    """The prompt text for `messages`, exactly as transformers' `apply_chat_template(messages,
    add_generation_prompt=..., tokenize=False)` renders `template` (the GGUF's
    `tokenizer.chat_template`; default: SmolLM2's)."""
    parsed = parse_chat_template(SMOLLM2_CHAT_TEMPLATE if template is None else template)
    return parsed.render(messages, add_generation_prompt)


def encode_chat(encoding, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True,
                template: Optional[str] = None) -> List[int]:
    """The prompt's token ids, as transformers' `apply_chat_template(..., tokenize=True)`: the
    rendered text encoded with every special token allowed (so `<|im_start|>` and
    `<|im_end|>` become their ids, also where a message's content contains them, as in
    transformers), and BOS in front when the encoding says the model wants it."""
    text = apply_chat_template(messages, add_generation_prompt, template)
    ids = encoding.encode(text, allowed_special="all")
    if getattr(encoding, "add_bos_token", False) and encoding.bos_token_id is not None:
        ids.insert(0, encoding.bos_token_id)
    return ids


def stop_token_ids(encoding) -> List[int]:
    """The ids that end the assistant's turn: `<|im_end|>` and the model's EOS (the same token
    in SmolLM2: id 2)."""
    ids = set()
    if IM_END in encoding.special_tokens_set:
        ids.add(encoding.encode_single_token(IM_END))
    if getattr(encoding, "eos_token_id", None) is not None:
        ids.add(encoding.eos_token_id)
    return sorted(ids)
