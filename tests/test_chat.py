"""Chat formatting (kernelgpt.chat) without the SmolLM2 files: ChatTemplate and
parse_chat_template (the default system prompt read out of a template, or none), rendering of
system / user / assistant turns and add_generation_prompt, the message checks (TypeError /
ValueError naming the bad message), templates of other families refused with
UnsupportedTemplateError, encode_chat (special tokens, BOS) and stop_token_ids on small
tokenizers trained here or built from the tiny GGUF vocabulary of gguf_writer.py, and a GGUF
model whose template is unsupported refusing to chat.
(test_smollm2_tokenizer.py checks SmolLM2's template against Jinja and the real vocabulary.)
"""
import types

import pytest

import gguf_writer
from kernelgpt import tokenizer as tk
from kernelgpt.chat import (IM_END, IM_START, SMOLLM2_CHAT_TEMPLATE, ChatTemplate,
                            UnsupportedTemplateError, apply_chat_template, encode_chat,
                            parse_chat_template, stop_token_ids)


SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PLAIN_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if "
                "add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
BOB = SMOLLM2_CHAT_TEMPLATE.replace("You are a helpful AI assistant named SmolLM, trained by "
                                    "Hugging Face", "You are Bob; be brief.")


def turn(role, content):
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def msg(role, content):
    return {"role": role, "content": content}


def chatml_encoding(**attributes):
    """A byte-level BPE (256 bytes + 20 merges) with the two ChatML special tokens, ids 276
    and 277; attributes: bos_token_id, eos_token_id, add_bos_token (as a GGUF sets them)."""
    text = "the user asks, the assistant answers: hello world! " * 4
    encoding = tk.train(text, 256 + 20, pattern="gpt2", special_tokens=[IM_START, IM_END])
    for name, value in attributes.items():
        setattr(encoding, name, value)
    return encoding


@pytest.fixture
def enc():
    return chatml_encoding()


# ---- templates ----------------------------------------------------------------------------------

def test_parse_reads_the_default_system_prompt():
    assert parse_chat_template(SMOLLM2_CHAT_TEMPLATE).default_system == SMOL_SYSTEM
    assert parse_chat_template(BOB).default_system == "You are Bob; be brief."
    assert parse_chat_template(PLAIN_CHATML).default_system is None
    assert repr(parse_chat_template(BOB)) == (
        "ChatTemplate(default_system='You are Bob; be brief.')")


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
    # a system message later on does not replace the default one (as the Jinja template)
    late = [msg("assistant", "Hello."), msg("system", "Be loud.")]
    assert apply_chat_template(late, add_generation_prompt=False, template=BOB) == (
        turn("system", "You are Bob; be brief.") + turn("assistant", "Hello.")
        + turn("system", "Be loud."))
    assert apply_chat_template([user], template=PLAIN_CHATML) == (
        turn("user", "Who are you?") + f"{IM_START}assistant\n")


def test_add_generation_prompt():
    messages = [msg("system", "s"), msg("user", "2+3?"), msg("assistant", "5")]
    without = apply_chat_template(messages, add_generation_prompt=False)
    assert without == turn("system", "s") + turn("user", "2+3?") + turn("assistant", "5")
    assert apply_chat_template(messages) == without + f"{IM_START}assistant\n"
    # no message: no default system prompt either
    assert apply_chat_template([], add_generation_prompt=False) == ""


def test_chat_template_renders_on_its_own():
    template = ChatTemplate("Be kind.")
    assert template.render([msg("user", "x")], add_generation_prompt=False) == (
        turn("system", "Be kind.") + turn("user", "x"))
    assert ChatTemplate(None).render([msg("tool", "{\"a\": 1}")]) == (
        turn("tool", "{\"a\": 1}") + f"{IM_START}assistant\n")
    assert repr(ChatTemplate(None)) == "ChatTemplate(default_system=None)"


def test_messages_may_be_any_sequence_of_mappings():
    as_list = apply_chat_template([msg("user", "a"), msg("assistant", "b")])
    as_tuple = apply_chat_template((types.MappingProxyType(msg("user", "a")),
                                    {"role": "assistant", "content": "b", "name": "extra"}))
    assert as_tuple == as_list


@pytest.mark.parametrize("messages,error,match", [
    (None, TypeError, "list of"),
    (42, TypeError, "list of"),
    (b"user: hi", TypeError, "list of"),
    ((m for m in [msg("user", "hi")]), TypeError, "list of"),
    ([msg("user", "hi"), ("user", "hi")], TypeError, "message 1 must be a dict"),
    ([{"content": "hi"}], ValueError, "message 0 has no 'role'"),
    ([msg("user", "a"), msg("assistant", "b"), {"role": "user"}], ValueError,
     "message 2 has no 'content'"),
    ([{"role": 3, "content": "hi"}], TypeError, "message 0: 'role' must be a str, got int"),
    ([msg("user", "a"), {"role": "user", "content": ["a"]}], TypeError,
     "message 1: 'content' must be a str, got list"),
])
def test_bad_messages(messages, error, match):
    with pytest.raises(error, match=match):
        apply_chat_template(messages)
    with pytest.raises(error, match=match):
        ChatTemplate(None).render(messages)


@pytest.mark.parametrize("template", [
    gguf_writer.llama_parts()[0]["tokenizer.chat_template"][1],  # the tiny GGUF's
    # Llama 3
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}{% endfor %}",
    # Zephyr
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + "
    "eos_token + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}"
    "{% endif %}",
    # ChatML without the generation prompt block
    PLAIN_CHATML[:PLAIN_CHATML.index("{% if add_generation_prompt")],
    # a default system prompt with a quote or a brace in it: refused, not mis-rendered
    BOB.replace("You are Bob; be brief.", "It's Bob"),
    BOB.replace("You are Bob; be brief.", "{{ name }}"),
])
def test_other_templates_are_unsupported(template):
    with pytest.raises(UnsupportedTemplateError, match="unsupported chat template") as info:
        parse_chat_template(template)
    message = str(info.value)
    assert template[:20] in message[message.index("this one begins"):]  # names what it refused
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("template", [None, b"{% for message in messages %}", 3])
def test_a_template_must_be_a_str(template):
    with pytest.raises(TypeError, match="must be a str"):
        parse_chat_template(template)


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
    assert encode_chat(enc, messages, template=PLAIN_CHATML) == enc.encode(
        turn("user", "hello") + f"{IM_START}assistant\n", allowed_special="all")


def test_encode_chat_puts_bos_in_front_when_the_model_wants_it(enc):
    messages = [msg("user", "the answer")]
    plain = encode_chat(enc, messages)
    bos = enc.encode_single_token(IM_START)
    wants_bos = chatml_encoding(bos_token_id=bos, add_bos_token=True)
    assert encode_chat(wants_bos, messages) == [bos] + plain
    assert encode_chat(chatml_encoding(bos_token_id=bos, add_bos_token=False), messages) == plain
    assert encode_chat(chatml_encoding(bos_token_id=None, add_bos_token=True), messages) == plain


def test_stop_token_ids(enc):
    end = enc.encode_single_token(IM_END)
    assert stop_token_ids(enc) == [end]  # no EOS set
    assert stop_token_ids(chatml_encoding(eos_token_id=end)) == [end]  # the same token once
    assert stop_token_ids(chatml_encoding(eos_token_id=101)) == [101, end]  # sorted
    no_specials = tk.train("abc abd", 256 + 2, pattern="gpt2")
    assert stop_token_ids(no_specials) == []


def test_stop_token_ids_without_im_end_is_the_eos():
    w = gguf_writer
    types_ = [3, 3] + [1] * (len(w.TOKENS) - 2)
    encoding = tk.Encoding.from_gguf_vocab(w.TOKENS, w.MERGES, types_, "gpt2", bos_token_id=1,
                                           eos_token_id=0)
    assert IM_END not in encoding.special_tokens_set
    assert stop_token_ids(encoding) == [0]


def test_a_gguf_model_with_an_unsupported_template_refuses_to_chat(tmp_path):
    from kernelgpt.llama import load_model
    path = tmp_path / "tiny.gguf"
    path.write_bytes(gguf_writer.llama_file(numeric=True))
    model = load_model(path)
    assert model.stop_tokens == [0]
    with pytest.raises(UnsupportedTemplateError):
        model.chat([msg("user", "ab")], 4)
    assert model.generate("ab", 3, temperature=0)  # plain generation still works
