"""Chat formatting (kernelgpt.chat): Jinja chat templates rendered as transformers'
apply_chat_template does (sandbox, trim_blocks / lstrip_blocks, loop controls, raise_exception,
strftime_now, tojson, bos_token / eos_token from the encoding); SmolLM2's template with the
exact output of before; the published Llama 3, Phi-3 and Gemma templates against outputs
written by hand from their formats; the sandbox refusing Python internals; syntax and render
errors as TemplateError; resolve_template (names, Jinja strings, files, the model's own,
MissingTemplateError); normalize_messages (content parts, roles, bad types); encode_chat (special
tokens, BOS) and stop_token_ids on small tokenizers trained here or built from the tiny GGUF
vocabulary of gguf_writer.py; a tiny GGUF model chatting with its own template or refusing
without one; and SmolLM2's GGUF template when the model is fetched.
"""
import types

import pytest

import gguf_writer
from kernelgpt import chat
from kernelgpt import tokenizer as tk
from kernelgpt.chat import (BUILTIN_TEMPLATES, IM_END, IM_START, SMOLLM2_CHAT_TEMPLATE,
                            ChatTemplate, MissingTemplateError, TemplateError,
                            UnsupportedTemplateError, apply_chat_template, encode_chat,
                            normalize_messages, parse_chat_template, resolve_template,
                            stop_token_ids)


SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PLAIN_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if "
                "add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
BOB = SMOLLM2_CHAT_TEMPLATE.replace("You are a helpful AI assistant named SmolLM, trained by "
                                    "Hugging Face", "You are Bob; be brief.")

# The published chat templates (tokenizer_config.json), verbatim.
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
          "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content "
          "%}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
          "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + "
        "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + "
        "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{"
        "'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if "
        "add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role "
         "not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == "
         "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must "
         "alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == "
         "'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + "
         "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'"
         "}}{% endif %}")


def turn(role, content):
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def msg(role, content):
    return {"role": role, "content": content}


def trained(specials, **attributes):
    """A byte-level BPE (256 bytes + 20 merges) with `specials` after the merges (ids 276...);
    attributes: bos_token_id, eos_token_id, add_bos_token (as a GGUF sets them)."""
    text = "the user asks, the assistant answers: hello world! " * 4
    encoding = tk.train(text, 256 + 20, pattern="gpt2", special_tokens=list(specials))
    for name, value in attributes.items():
        setattr(encoding, name, value)
    return encoding


def chatml_encoding(**attributes):
    """trained() with the two ChatML special tokens, ids 276 and 277."""
    return trained([IM_START, IM_END], **attributes)


@pytest.fixture
def enc():
    return chatml_encoding()


# ---- SmolLM2 / ChatML ---------------------------------------------------------------------------

def test_smollm2_output_is_the_one_of_before():
    # the module docstring's example, and its doctest
    assert apply_chat_template([msg("user", "What is gravity?")]) == (
        f"{IM_START}system\n{SMOL_SYSTEM}{IM_END}\n{IM_START}user\nWhat is gravity?{IM_END}\n"
        f"{IM_START}assistant\n")
    import doctest
    assert doctest.testmod(chat).failed == 0
    assert BUILTIN_TEMPLATES["smollm2"] == SMOLLM2_CHAT_TEMPLATE
    assert apply_chat_template([msg("user", "x")], template="smollm2") == apply_chat_template(
        [msg("user", "x")])


def test_system_user_assistant_turns():
    messages = [msg("system", "Answer in French."), msg("user", "Hi!"),
                msg("assistant", "Bonjour !"), msg("user", "Ça va ?")]
    assert apply_chat_template(messages) == (
        turn("system", "Answer in French.") + turn("user", "Hi!") + turn("assistant", "Bonjour !")
        + turn("user", "Ça va ?") + f"{IM_START}assistant\n")


def test_default_system_prompt_only_when_the_first_message_is_not_a_system_one():
    user = msg("user", "Who are you?")
    assert apply_chat_template([user], template=BOB) == (
        turn("system", "You are Bob; be brief.") + turn("user", "Who are you?")
        + f"{IM_START}assistant\n")
    # a system message later on does not replace the default one
    late = [msg("assistant", "Hello."), msg("system", "Be loud.")]
    assert apply_chat_template(late, add_generation_prompt=False, template=BOB) == (
        turn("system", "You are Bob; be brief.") + turn("assistant", "Hello.")
        + turn("system", "Be loud."))
    for plain in (PLAIN_CHATML, "chatml", "ChatML"):
        assert apply_chat_template([user], template=plain) == (
            turn("user", "Who are you?") + f"{IM_START}assistant\n")


def test_add_generation_prompt():
    messages = [msg("system", "s"), msg("user", "2+3?"), msg("assistant", "5")]
    without = apply_chat_template(messages, add_generation_prompt=False)
    assert without == turn("system", "s") + turn("user", "2+3?") + turn("assistant", "5")
    assert apply_chat_template(messages) == without + f"{IM_START}assistant\n"


def test_chat_template_object():
    template = ChatTemplate(BOB, name="bob")
    assert template.source == BOB and template.name == "bob"
    assert template.render([msg("user", "x")], add_generation_prompt=False) == (
        turn("system", "You are Bob; be brief.") + turn("user", "x"))
    assert repr(template) == "ChatTemplate(name='bob')"
    unnamed = ChatTemplate(PLAIN_CHATML)
    assert unnamed.name is None and repr(unnamed).startswith('ChatTemplate("{% for message')
    assert unnamed.render([msg("tool", "{\"a\": 1}")]) == (
        turn("tool", "{\"a\": 1}") + f"{IM_START}assistant\n")
    # parse_chat_template, for old callers
    old = parse_chat_template(SMOLLM2_CHAT_TEMPLATE)
    assert isinstance(old, ChatTemplate) and old.source == SMOLLM2_CHAT_TEMPLATE
    with pytest.raises(TypeError, match="must be a str"):
        parse_chat_template(b"{% for message in messages %}")
    with pytest.raises(TypeError, match="must be a str"):
        ChatTemplate(None)


# ---- the published templates of other families --------------------------------------------------

def test_llama3():
    assert BUILTIN_TEMPLATES["llama3"] == LLAMA3
    t = ChatTemplate(LLAMA3, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    assert t.render([msg("user", "Hi")]) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # BOS once, at the start; contents trimmed
    assert t.render([msg("system", " Be brief. "), msg("user", "Hi\n"), msg("assistant", "Hello")],
                    add_generation_prompt=False) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>")


def test_phi3():
    assert BUILTIN_TEMPLATES["phi3"] == PHI3
    t = ChatTemplate(PHI3, bos_token="<s>", eos_token="<|endoftext|>")
    conversation = [msg("system", "You are terse."), msg("user", "Hello!"), msg("assistant", "Hi.")]
    assert t.render(conversation + [msg("user", "2+2?")]) == (
        "<|system|>\nYou are terse.<|end|>\n<|user|>\nHello!<|end|>\n<|assistant|>\nHi.<|end|>\n"
        "<|user|>\n2+2?<|end|>\n<|assistant|>\n")
    # no generation prompt: the text ends with EOS; a tool message is left out
    assert t.render(conversation + [msg("tool", "x")], add_generation_prompt=False) == (
        "<|system|>\nYou are terse.<|end|>\n<|user|>\nHello!<|end|>\n<|assistant|>\nHi.<|end|>\n"
        "<|endoftext|>")


def test_gemma():
    assert BUILTIN_TEMPLATES["gemma"] == GEMMA
    t = ChatTemplate(GEMMA, bos_token="<bos>", eos_token="<eos>", name="gemma")
    assert t.render([msg("user", " Hi "), msg("assistant", "Hello."), msg("user", "Why?")]) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n")


def test_raise_exception_is_a_template_error():
    t = resolve_template("gemma")
    with pytest.raises(TemplateError, match="'gemma': System role not supported"):
        t.render([msg("system", "Be kind."), msg("user", "Hi")])
    with pytest.raises(TemplateError, match="Conversation roles must alternate"):
        t.render([msg("user", "a"), msg("user", "b")])
    with pytest.raises(ValueError, match="Conversation roles must alternate"):
        t.render([msg("assistant", "a")])
    custom = ChatTemplate("{% if messages[-1]['role'] != 'user' %}{{ raise_exception('last "
                          "message must be the user\\'s, not ' + messages[-1]['role']) }}"
                          "{% endif %}ok")
    assert custom.render([msg("user", "a")]) == "ok"
    with pytest.raises(TemplateError, match="chat template: last message must be the user's, "
                                            "not assistant"):
        custom.render([msg("user", "a"), msg("assistant", "b")])


# ---- the Jinja environment ----------------------------------------------------------------------

def test_bos_and_eos_come_from_the_encoding():
    enc = trained(["<s>", "</s>", IM_START, IM_END], bos_token_id=276, eos_token_id=277)
    source = "{{ bos_token }}|{% for m in messages %}{{ m['content'] }}{% endfor %}|{{ eos_token }}"
    t = resolve_template(source, encoding=enc)
    assert (t.bos_token, t.eos_token) == ("<s>", "</s>")
    assert t.render([msg("user", "x")]) == "<s>|x|</s>"
    assert t.render([msg("user", "x")], bos_token="") == "|x|</s>"  # a keyword overrides
    # no BOS / EOS, or no encoding: empty strings
    assert resolve_template(source, encoding=chatml_encoding()).render([msg("user", "y")]) == "|y|"
    assert resolve_template(source).render([msg("user", "y")]) == "|y|"

    class Plain:  # an encoding with decode() only, and EOS only
        eos_token_id = 7

        def decode(self, ids):
            return "".join(f"<{i}>" for i in ids)

    assert resolve_template(source, encoding=Plain()).render([msg("user", "z")]) == "|z|<7>"
    # the model's own template gets them too
    assert resolve_template(None, source, enc).render([msg("user", "w")]) == "<s>|w|</s>"


def test_jinja_features_as_transformers():
    t = ChatTemplate("{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
                     "{% if m['role'] == 'system' %}{% continue %}{% endif %}"
                     "{{ m['content'] }};{% endfor %}")
    assert t.render([msg("system", "s"), msg("user", "a"), msg("assistant", "b"),
                     msg("user", "c")]) == "a;"
    t = ChatTemplate("{{ messages | tojson }} {{ {'b': 'ü', 'a': [1, 2]} | tojson(indent=1) }}")
    assert t.render([msg("user", "é\"<>&")]) == (
        '[{"role": "user", "content": "é\\"<>&"}] {\n "b": "ü",\n "a": [\n  1,\n  2\n ]\n}')
    year = ChatTemplate("{{ strftime_now('%Y') }}").render([msg("user", "x")])
    assert year.isdigit() and int(year) >= 2024
    # extra keywords are template variables; tools and documents are None unless given
    t = ChatTemplate("{{ tools is none }} {{ documents is none }} {{ greeting | default('-') }}")
    assert t.render([msg("user", "x")]) == "True True -"
    assert t.render([msg("user", "x")], tools=[{"name": "f"}], greeting="hi") == "False True hi"


def test_trim_blocks_and_lstrip_blocks():
    source = ("{% for message in messages %}\n"
              "    {% if message['role'] == 'user' %}\n"
              "    {{ message['role'] }}: {{ message['content'] }}\n"
              "    {% endif %}\n"
              "{% endfor %}\n"
              "end")
    assert ChatTemplate(source).render([msg("user", "Hi"), msg("assistant", "Yo"),
                                        msg("user", "Ok")]) == "    user: Hi\n    user: Ok\nend"


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ raise_exception.__globals__['os'] }}",
    "{{ messages.append(messages[0]) }}",  # immutable: the caller's data stays as it is
    "{{ messages[0].update({'role': 'system'}) }}",
])
def test_the_sandbox_refuses_python_internals(source):
    messages = [msg("user", "hi")]
    with pytest.raises(TemplateError, match="unsafe"):
        ChatTemplate(source).render(messages)
    assert messages == [msg("user", "hi")]


def test_a_template_cannot_format_its_way_out():
    t = ChatTemplate("{{ '{0.__class__.__init__.__globals__}'.format(messages) }}")
    with pytest.raises(TemplateError, match="unsafe"):
        t.render([msg("user", "x")])


def test_a_syntax_error_names_the_line_and_the_problem():
    with pytest.raises(TemplateError, match=r"chat template 'bad': syntax error on line 2: "
                                            r"expected token 'in'.*\{% for m %\}"):
        ChatTemplate("ok\n{% for m %}{{ m }}{% endfor %}", name="bad")
    with pytest.raises(TemplateError, match="syntax error on line 1:.*endfor"):
        ChatTemplate("{% for m in messages %}{{ m['content'] }}")
    with pytest.raises(ValueError, match="syntax error"):
        resolve_template("{{ messages[ }}")
    with pytest.raises(TemplateError, match="syntax error.*unknown tag 'generation'"):
        ChatTemplate("{% generation %}x{% endgeneration %}")


def test_render_errors_become_template_errors():
    with pytest.raises(TemplateError, match="'nope' is undefined"):
        ChatTemplate("{{ 'a' + nope }}").render([msg("user", "x")])
    with pytest.raises(TemplateError, match="ZeroDivisionError"):
        ChatTemplate("{{ 1 / 0 }}").render([msg("user", "x")])
    with pytest.raises(TemplateError, match="TypeError"):
        ChatTemplate("{{ 'a' + 1 }}").render([msg("user", "x")])
    # an undefined value printed on its own is "" (as in transformers)
    assert ChatTemplate("[{{ messages[0]['name'] }}]").render([msg("user", "x")]) == "[]"


# ---- resolve_template ---------------------------------------------------------------------------

def test_builtin_templates():
    assert {"chatml", "smollm2", "llama3", "phi3", "gemma"} <= set(BUILTIN_TEMPLATES)
    for name, source in BUILTIN_TEMPLATES.items():
        t = resolve_template(name)
        assert t.name == name and t.source == source
        assert repr(t) == f"ChatTemplate(name={name!r})"
    assert BUILTIN_TEMPLATES["chatml"] == PLAIN_CHATML
    assert "SmolLM" not in BUILTIN_TEMPLATES["chatml"]


def test_resolve_template_choices(tmp_path):
    t = ChatTemplate(PLAIN_CHATML)
    assert resolve_template(t, "{{ x }}") is t
    # None: the model's own template
    own = resolve_template(None, BOB)
    assert own.source == BOB
    # a choice wins over the model's template
    assert resolve_template("chatml", BOB).source == PLAIN_CHATML
    assert resolve_template(PLAIN_CHATML, BOB).source == PLAIN_CHATML
    # a file, as a str or a path
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}",
                    encoding="utf-8")
    for choice in (str(path), path):
        t = resolve_template(choice)
        assert t.name == "mine.jinja" and t.render([msg("user", "é")]) == "<user>é"
    assert apply_chat_template([msg("user", "x")], template=path) == "<user>x"


def test_resolve_template_errors(tmp_path):
    with pytest.raises(TemplateError, match=r"unknown chat template 'llama2'.*chatml, smollm2"):
        resolve_template("llama2")
    missing = str(tmp_path / "missing.jinja")
    with pytest.raises(TemplateError, match="not an existing file"):
        resolve_template(missing)
    with pytest.raises(TypeError, match="chat template must be a str"):
        resolve_template(3)
    with pytest.raises(TypeError, match="chat template must be a str"):
        resolve_template(b"chatml")


def test_missing_template_error_says_how_to_choose_one():
    for model_template in (None, "", "  \n"):
        with pytest.raises(MissingTemplateError) as info:
            resolve_template(None, model_template)
        text = str(info.value)
        assert "tokenizer.chat_template" in text
        assert "--template chatml" in text and 'template="chatml"' in text
        assert "Jinja" in text and ".jinja" in text
    assert issubclass(MissingTemplateError, TemplateError)
    assert issubclass(TemplateError, ValueError)
    assert UnsupportedTemplateError is TemplateError


# ---- messages -----------------------------------------------------------------------------------

def test_messages_may_be_any_sequence_of_mappings():
    as_list = apply_chat_template([msg("user", "a"), msg("assistant", "b")])
    as_tuple = apply_chat_template((types.MappingProxyType(msg("user", "a")),
                                    {"role": "assistant", "content": "b", "name": "extra"}))
    assert as_tuple == as_list


def test_content_parts_are_joined():
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "gravity?"}]
    assert normalize_messages([msg("user", parts)]) == [msg("user", "What is gravity?")]
    assert apply_chat_template([msg("user", parts)]) == apply_chat_template(
        [msg("user", "What is gravity?")])
    assert normalize_messages([msg("user", [])]) == [msg("user", "")]
    assert normalize_messages([msg("user", ({"text": "untyped"},))]) == [msg("user", "untyped")]


def test_extra_keys_pass_through_and_the_input_is_not_changed():
    calls = [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]
    messages = [msg("user", "a"), {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "content": "42", "name": "f"}]
    normalized = normalize_messages(messages)
    assert normalized == [msg("user", "a"), {"role": "assistant", "content": "", "tool_calls": calls},
                          {"role": "tool", "content": "42", "name": "f"}]
    assert messages[1]["content"] is None  # copies
    t = ChatTemplate("{% for m in messages %}{{ m['role'] }}:{{ m.get('name', '-') }}:"
                     "{{ m['tool_calls'] | length if m['tool_calls'] is defined else 0 }};"
                     "{% endfor %}")
    assert t.render(messages) == "user:-:0;assistant:-:1;tool:f:0;"
    # an assistant message without content at all: ""
    assert normalize_messages([{"role": "assistant", "tool_calls": calls}])[0]["content"] == ""


def test_every_role_is_accepted():
    roles = ["system", "user", "assistant", "tool", "developer"]
    assert [m["role"] for m in normalize_messages([msg(r, "x") for r in roles])] == roles


@pytest.mark.parametrize("messages,error,match", [
    (None, TypeError, "list of"),
    (42, TypeError, "list of"),
    ("user: hi", TypeError, "list of"),
    (b"user: hi", TypeError, "list of"),
    (msg("user", "hi"), TypeError, "list of"),
    ((m for m in [msg("user", "hi")]), TypeError, "list of"),
    ([], ValueError, "empty"),
    ([msg("user", "hi"), ("user", "hi")], TypeError, "message 1 must be a dict"),
    (["hello"], TypeError, "message 0 must be a dict"),
    ([{"content": "hi"}], ValueError, "message 0 has no 'role'"),
    ([msg("user", "a"), msg("assistant", "b"), {"role": "user"}], ValueError,
     "message 2 has no 'content'"),
    ([{"role": 3, "content": "hi"}], TypeError, "message 0: 'role' must be a str, got int"),
    ([msg("wizard", "hi")], ValueError,
     "message 0: unknown role 'wizard' .*system, user, assistant, tool, developer"),
    ([msg("User", "hi")], ValueError, "unknown role 'User'"),
    ([msg("user", None)], TypeError, "message 0: 'content' must be a str .*None only for an "
                                     "assistant"),
    ([msg("user", "a"), msg("user", 3)], TypeError, "message 1: 'content' must be a str or a "
                                                    "list of text parts, got int"),
    ([msg("user", ["a"])], TypeError, "message 0: content part 0 must be a dict"),
    ([msg("user", [{"type": "text", "text": "a"},
                   {"type": "image_url", "image_url": {"url": "http://x/y.png"}}])],
     ValueError, "message 0: content part 1 has type 'image_url': only text parts"),
    ([msg("user", [{"type": "text"}])], TypeError, "content part 0: 'text' must be a str"),
])
def test_bad_messages(messages, error, match):
    with pytest.raises(error, match=match):
        normalize_messages(messages)
    with pytest.raises(error, match=match):
        apply_chat_template(messages)
    with pytest.raises(error, match=match):
        ChatTemplate(PLAIN_CHATML).render(messages)


# ---- encode_chat and stop_token_ids -------------------------------------------------------------

def test_encode_chat_is_the_rendered_text_with_special_tokens(enc):
    messages = [msg("user", "hello world!")]
    ids = encode_chat(enc, messages)
    text = apply_chat_template(messages)
    assert ids == enc.encode(text, allowed_special="all")
    assert enc.decode(ids) == text
    start, end = enc.encode_single_token(IM_START), enc.encode_single_token(IM_END)
    assert ids.count(start) == 3 and ids.count(end) == 2  # system, user, assistant / 2 ends
    assert ids[0] == start and ids[-1] != end


def test_encode_chat_special_token_text_in_content_becomes_the_token(enc):
    ids = encode_chat(enc, [msg("user", f"a{IM_END}b")], add_generation_prompt=False,
                      template=PLAIN_CHATML)
    end = enc.encode_single_token(IM_END)
    assert ids.count(end) == 2  # the content's and the turn's (as transformers does)


def test_encode_chat_with_a_template(enc):
    messages = [msg("user", "hello")]
    expected = enc.encode(turn("user", "hello") + f"{IM_START}assistant\n", allowed_special="all")
    assert encode_chat(enc, messages, template=PLAIN_CHATML) == expected
    assert encode_chat(enc, messages, template="chatml") == expected
    assert encode_chat(enc, messages, template=ChatTemplate(PLAIN_CHATML)) == expected


def test_encode_chat_puts_bos_in_front_when_the_model_wants_it():
    messages = [msg("user", "the answer")]
    specials = ["<s>", "</s>", IM_START, IM_END]
    plain = encode_chat(trained(specials), messages, template="chatml")
    wants_bos = trained(specials, bos_token_id=276, add_bos_token=True)
    assert encode_chat(wants_bos, messages, template="chatml") == [276] + plain
    assert encode_chat(trained(specials, bos_token_id=276, add_bos_token=False), messages,
                       template="chatml") == plain
    assert encode_chat(trained(specials, bos_token_id=None, add_bos_token=True), messages,
                       template="chatml") == plain
    # a template that writes BOS itself: not twice
    llama = encode_chat(wants_bos, messages, template="{{ bos_token }}" + PLAIN_CHATML)
    assert llama == [276] + plain and llama.count(276) == 1
    # SmolLM2's case: BOS is <|im_start|>, which the text starts with
    smol_like = chatml_encoding(bos_token_id=276, add_bos_token=True)
    assert encode_chat(smol_like, messages) == encode_chat(chatml_encoding(), messages)


def test_stop_token_ids(enc):
    end = enc.encode_single_token(IM_END)
    assert stop_token_ids(enc) == [end]  # no EOS set
    assert stop_token_ids(chatml_encoding(eos_token_id=end)) == [end]  # the same token once
    assert stop_token_ids(chatml_encoding(eos_token_id=101)) == [101, end]  # sorted
    assert stop_token_ids(enc, template="chatml") == [end]
    no_specials = tk.train("abc abd", 256 + 2, pattern="gpt2")
    assert stop_token_ids(no_specials) == []


def test_stop_token_ids_are_every_end_of_turn_token():
    ends = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>"]
    enc = trained(["<s>", "<|start_header_id|>"] + ends + ["<start_of_turn>"], eos_token_id=276)
    assert stop_token_ids(enc) == [276] + list(range(278, 278 + len(ends)))
    # Llama 3's: EOS <|end_of_text|>, turns end with <|eot_id|> (or <|eom_id|>)
    llama = trained(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>",
                     "<|start_header_id|>"], bos_token_id=276, eos_token_id=277)
    assert stop_token_ids(llama) == [277, 278, 279]


def test_stop_token_ids_without_an_end_of_turn_token_is_the_eos():
    w = gguf_writer
    types_ = [3, 3] + [1] * (len(w.TOKENS) - 2)
    encoding = tk.Encoding.from_gguf_vocab(w.TOKENS, w.MERGES, types_, "gpt2", bos_token_id=1,
                                           eos_token_id=0)
    assert IM_END not in encoding.special_tokens_set
    assert stop_token_ids(encoding) == [0]  # <|endoftext|>, also the EOS


# ---- models -------------------------------------------------------------------------------------

def test_a_gguf_model_chats_with_its_own_template_or_a_chosen_one(tmp_path):
    from kernelgpt.llama import load_model
    path = tmp_path / "tiny.gguf"
    path.write_bytes(gguf_writer.llama_file(numeric=True))
    model = load_model(path)
    assert model.stop_tokens == [0]
    # its template: "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert model.encode_chat([msg("user", "ab"), msg("assistant", "cd")]) == (
        model.tokenizer.encode("abcd"))
    chosen = load_model(path, template="{% for m in messages %}{{ m['content'] }} "
                                       "{% endfor %}")
    assert chosen.encode_chat([msg("user", "ab")]) == chosen.tokenizer.encode("ab ")


def test_a_gguf_model_without_a_template_refuses_to_chat(tmp_path):
    from kernelgpt.llama import load_model
    kvs, tensors = gguf_writer.llama_parts(numeric=True)
    del kvs["tokenizer.chat_template"]
    path = tmp_path / "untemplated.gguf"
    path.write_bytes(gguf_writer.build(gguf_writer.encode(kvs), tensors))
    model = load_model(path)
    with pytest.raises(MissingTemplateError, match="--template chatml"):
        model.chat([msg("user", "ab")], stream=False, max_tokens=4)
    assert model.generate("ab", 3, temperature=0)  # plain generation still works
    chatty = load_model(path, template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert chatty.encode_chat([msg("user", "ab")]) == chatty.tokenizer.encode("ab")


def test_smollm2_gguf_template_renders_as_before():
    from kernelgpt.io import fetch
    from kernelgpt.io.gguf import GGUFFile
    path = fetch.cached("smollm2")
    if path is None:
        pytest.skip("SmolLM2 not fetched (kernelgpt fetch smollm2)")
    metadata = GGUFFile(path).metadata
    source = metadata["tokenizer.chat_template"]
    assert source == SMOLLM2_CHAT_TEMPLATE
    encoding = tk.Encoding.from_gguf_metadata(
        {k: v for k, v in metadata.items() if k.startswith("tokenizer.ggml.")})
    template = resolve_template(None, source, encoding)
    assert (template.bos_token, template.eos_token) == (IM_START, IM_END)
    messages = [msg("user", "What is gravity?"), msg("assistant", "A force."), msg("user", "Why?")]
    expected = (turn("system", SMOL_SYSTEM) + turn("user", "What is gravity?")
                + turn("assistant", "A force.") + turn("user", "Why?") + f"{IM_START}assistant\n")
    assert template.render(messages) == expected == apply_chat_template(messages)
    ids = encode_chat(encoding, messages, template=template)
    assert ids == encoding.encode(expected, allowed_special="all") and ids[0] == 1
    assert 2 in stop_token_ids(encoding)  # <|im_end|>, SmolLM2's EOS
