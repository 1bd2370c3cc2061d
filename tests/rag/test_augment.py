"""Prompt augmentation: a pure function with a documented rendering, in both modes."""
from __future__ import annotations

import copy

import pytest

from tunelab.rag.augment import augment, render_context
from tunelab.rag.retrieve import Hit

HITS = [Hit(3, "gsm8k_train.jsonl:12", "/data/gsm8k_train.jsonl", ":12", "Natalia sold 48/2 = 24 clips in May.\n", 0.9),
        {"citation": "notes.md:40", "text": "Half of 48 is 24."}]
CONTEXT = ("Use the numbered passages below if they help to answer, and cite them as [n].\n\n"
           "[1] gsm8k_train.jsonl:12\nNatalia sold 48/2 = 24 clips in May.\n\n"
           "[2] notes.md:40\nHalf of 48 is 24.")


def test_system_mode_adds_or_extends_the_system_message():
    msgs = [{"role": "user", "content": "How many clips in May?"}]
    frozen = copy.deepcopy(msgs)
    out = augment(msgs, HITS, mode="system")
    assert out == [{"role": "system", "content": CONTEXT}, {"role": "user", "content": "How many clips in May?"}]
    assert msgs == frozen  # the input is untouched
    with_sys = [{"role": "system", "content": "Be brief."}, *msgs]
    assert augment(with_sys, HITS)[0] == {"role": "system", "content": "Be brief.\n\n" + CONTEXT}
    assert len(augment(with_sys, HITS)) == 2


def test_before_question_mode_prefixes_the_last_user_turn():
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "How many clips in May?"}]
    out = augment(msgs, HITS, mode="before_question")
    assert out[:2] == msgs[:2]
    assert out[2] == {"role": "user", "content": CONTEXT + "\n\nHow many clips in May?"}


def test_templates_no_hits_and_bad_calls():
    msgs = [{"role": "user", "content": "q"}]
    assert augment(msgs, []) == msgs and augment(msgs, []) is not msgs
    assert render_context(HITS[:1], "Context:\n{passages}\nEnd", "<{n}|{citation}> {text}") == \
        "Context:\n<1|gsm8k_train.jsonl:12> Natalia sold 48/2 = 24 clips in May.\nEnd"
    with pytest.raises(ValueError, match="must contain {passages}"):
        augment(msgs, HITS, template="no placeholder")
    with pytest.raises(ValueError, match="augment mode 'after' is not one of system, before_question"):
        augment(msgs, HITS, mode="after")
    with pytest.raises(ValueError, match="needs a user message"):
        augment([{"role": "system", "content": "s"}], HITS, mode="before_question")
