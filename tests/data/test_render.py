"""The renderer's contract: ids equal the tokenizer's chat template token for token; the supervised
tokens are exactly the assistant replies plus their end-of-turn token; the inference prompt is the
exact prefix before the last reply."""
from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tunelab.data.clean import is_empty, normalise, normalise_text
from tunelab.data.conversation import DataError
from tunelab.data.render import IGNORE_INDEX, build_renderer

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "2 + 3 = 5, so \\boxed{5}."}],
    [{"role": "system", "content": "You are a careful math tutor."},
     {"role": "user", "content": "Solve x + 1 = 3."}, {"role": "assistant", "content": "x = 2"}],
    [{"role": "user", "content": "小明有5个苹果，吃了2个，还剩几个？"},
     {"role": "assistant", "content": "5 - 2 = 3（个）。\n答：还剩3个。\\boxed{3}"}],
    [{"role": "system", "content": "用中文回答。"},
     {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"},
     {"role": "user", "content": "1+1等于几？"}, {"role": "assistant", "content": "等于2。"},
     {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome."}],
    [{"role": "user", "content": "Write code"},
     {"role": "assistant", "content": "```python\ndef f(x):\n    return x  # indented\n```"}],
    [{"role": "user", "content": "4"}, {"role": "assistant", "content": "4"},  # content repeated in the prompt
     {"role": "user", "content": "You"}, {"role": "assistant", "content": "You are a helpful AI assistant"}],
]


def reference_ids(tok, msgs, **kw):
    return list(tok.apply_chat_template(msgs, tokenize=True, enable_thinking=False, **kw)["input_ids"])


def supervised_runs(tok, ids, labels):
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i  # labels are the ids themselves (the model shifts)
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def check(renderer, tok, msgs):
    ids, labels = renderer.render(msgs)
    assert ids == reference_ids(tok, msgs)
    replies = [m["content"] + renderer.eot for m in msgs if m["role"] == "assistant"]
    assert supervised_runs(tok, ids, labels) == replies
    prompt = renderer.render_prompt(msgs[:-1])
    assert ids[: len(prompt)] == prompt
    assert all(lab == IGNORE_INDEX for lab in labels[: len(prompt)][-1:]) or len(prompt) == 0
    assert tok.decode(ids[len(prompt):]).startswith(msgs[-1]["content"] + renderer.eot)


@pytest.mark.parametrize("which", ["qwen_tok", "smol_tok"])
@pytest.mark.parametrize("idx", range(len(CONVERSATIONS)))
def test_ids_equal_chat_template_and_labels_are_replies(which, idx, request):
    tok = request.getfixturevalue(which)
    renderer = build_renderer(tok)
    assert renderer.eot == "<|im_end|>"
    check(renderer, tok, CONVERSATIONS[idx])


def test_qwen3_thinking_block_belongs_to_the_prompt(qwen_tok):
    msgs = CONVERSATIONS[0]
    r = build_renderer(qwen_tok, enable_thinking=False)
    prompt = qwen_tok.decode(r.render_prompt(msgs[:-1]))
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids, labels = r.render(msgs)
    first_supervised = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert qwen_tok.decode(ids[:first_supervised]) == prompt
    # earlier turns are rendered without the block (Qwen3's template), and still supervised exactly
    multi = CONVERSATIONS[3]
    text = qwen_tok.decode(r.render(multi)[0])
    assert text.count("<think>") == 1


def test_smollm2_default_system_prompt_is_not_supervised(smol_tok):
    ids, labels = build_renderer(smol_tok).render(CONVERSATIONS[0])
    assert "You are a helpful AI assistant named SmolLM" in smol_tok.decode(ids)
    assert supervised_runs(smol_tok, ids, labels) == ["2 + 3 = 5, so \\boxed{5}.<|im_end|>"]


def test_end_of_turn_is_supervised_even_though_it_is_the_pad_token(smol_tok):
    assert smol_tok.pad_token == "<|im_end|>"  # NOTES: masking by pad id would unsupervise it
    ids, labels = build_renderer(smol_tok).render(CONVERSATIONS[1])
    im_end = smol_tok.convert_tokens_to_ids("<|im_end|>")
    supervised_eot = [i for i, lab in zip(ids, labels) if lab == im_end]
    assert len(supervised_eot) == 1


def test_last_turn_and_all_tokens(qwen_tok):
    msgs = CONVERSATIONS[3]
    ids, labels = build_renderer(qwen_tok, supervise="last_turn").render(msgs)
    assert supervised_runs(qwen_tok, ids, labels) == ["You're welcome.<|im_end|>"]
    ids, labels = build_renderer(qwen_tok, supervise="all_tokens").render(msgs)
    assert labels == ids


@pytest.mark.parametrize("template,eot", [("chatml", "<|im_end|>"), ("plain", "<|im_end|>"), ("alpaca", "<|im_end|>")])
def test_builtin_templates(smol_tok, template, eot):
    tok = copy.deepcopy(smol_tok)  # the renderer installs the template on the tokenizer
    r = build_renderer(tok, template=template)
    assert r.template == template and r.eot == eot  # SmolLM2's eos token is <|im_end|>
    for msgs in CONVERSATIONS:
        if template == "alpaca" and sum(m["role"] == "user" for m in msgs) > 1:
            continue
        ids, labels = r.render(msgs)
        assert ids == list(tok.apply_chat_template(msgs, tokenize=True)["input_ids"])
        assert supervised_runs(tok, ids, labels) == [m["content"] + eot for m in msgs if m["role"] == "assistant"]
    assert "### Response:" in tok.decode(r.render_prompt(msgs[:-1])) or template != "alpaca"


def test_unknown_template_lists_known(qwen_tok):
    with pytest.raises(DataError, match="known: auto, tokenizer, chatml, plain, alpaca"):
        build_renderer(copy.deepcopy(qwen_tok), template="vicuna")


def test_template_that_rewrites_content_is_an_error_naming_record_and_message(qwen_tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\nstarts with newlines"}]
    with pytest.raises(DataError, match=r"^f\.jsonl:7: template 'tokenizer' changes the content of message 1 "
                                        r"\(assistant, starting '\\n\\nstarts with newlines'\) when rendering"):
        build_renderer(qwen_tok).render_many([msgs], wheres=["f.jsonl:7"])
    think = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>x</think>a"},
             {"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(DataError, match=r"changes the content of message 1 \(assistant, starting '<think>"):
        build_renderer(qwen_tok).render(think)
    # only the LAST reply loses its leading newlines in Qwen3's template; SmolLM2's keeps them all
    earlier = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\nfirst"},
               {"role": "user", "content": "q2"}, {"role": "assistant", "content": "second"}]
    assert build_renderer(qwen_tok).render(earlier)[0] == reference_ids(qwen_tok, earlier)


def test_spaces_and_blank_lines_inside_messages_render_verbatim(qwen_tok, smol_tok):
    """What `data.normalize=basic` keeps is what both templates render as given."""
    msgs = [{"role": "system", "content": "  sys  \n"}, {"role": "user", "content": "\n  q\n\n\n"},
            {"role": "assistant", "content": "Code:\n    indented\n\n\ndef f():\n    pass\n  "}]
    for tok in (qwen_tok, smol_tok):
        check(build_renderer(tok), tok, msgs)


def test_why_basic_strips_a_replys_leading_spaces(smol_tok):
    """SmolLM2's pre-tokenizer (GPT-2's) merges the template's newline with the spaces after it: a reply
    starting with spaces would not start on a token boundary, and the inference prompt (ending in the
    newline) would not be a prefix of the training ids. clean.normalise(basic) removes them."""
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  x = 1"}]
    r = build_renderer(smol_tok)
    ids, _ = r.render(msgs)
    assert ids == reference_ids(smol_tok, msgs)  # the ids are still the template's...
    prompt = r.render_prompt(msgs[:1])
    assert ids[:len(prompt)] != prompt  # ...but the prompt is not their prefix
    assert "\u010a\u0120" in smol_tok.convert_ids_to_tokens(ids)  # one token: newline + space
    fixed = normalise({"messages": msgs}, "basic")["messages"]
    assert fixed[1]["content"] == "x = 1"
    check(r, smol_tok, fixed)


# -- property test on many conversations ------------------------------------------------------
_alphabet = st.sampled_from(list("abcxyzABC 0123456789+-=*/().,!?:;'\"\n\t$\\{}[]_#@") +
                            list("的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自") +
                            list("，。！？：；（）“”、") + ["é", "ü", "😀"])
_content = st.text(_alphabet, min_size=1, max_size=60).map(lambda t: normalise_text(t, "full")).filter(bool)
# `data.normalize=basic` keeps whitespace; the raw alphabet adds what basic removes or rewrites
_raw = st.lists(st.one_of(_alphabet, st.sampled_from(["\r\n", "\r", "\u200b", "\ufeff", "e\u0301", "  ", "\n\n"])),
                min_size=1, max_size=40).map("".join)


@st.composite
def conversations(draw, content=_content):
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(content)})
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(content)})
        msgs.append({"role": "assistant", "content": draw(content)})
    return msgs


@pytest.mark.parametrize("which", ["qwen_tok", "smol_tok"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=conversations())
def test_property_many_conversations(which, msgs, request):
    tok = request.getfixturevalue(which)
    check(build_renderer(tok), tok, msgs)


@pytest.mark.parametrize("which", ["qwen_tok", "smol_tok"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=conversations(content=_raw))
def test_property_basic_normalisation_always_renders(which, msgs, request):
    """Whatever `basic` leaves of raw text renders through both templates verbatim (ids equal the template's,
    labels exactly the replies): the reply rule of clean.normalise is all Qwen3 needs."""
    conv = normalise({"messages": msgs}, "basic")
    assume(not is_empty(conv))
    tok = request.getfixturevalue(which)
    check(build_renderer(tok), tok, conv["messages"])
