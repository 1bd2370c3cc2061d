"""Cleaning: the three `data.normalize` modes on exact strings, what counts as empty, and a split that
would leave nothing to train on."""
from __future__ import annotations

import pytest

from tunelab.data.clean import is_empty, normalise, normalise_text, split
from tunelab.errors import DataError

CODE = "Here:\r\n\r\n```python\nimport os\n\n\ndef f():  \n    return 1\n```\n"
RAW = "  e\u0301t\u00e9\u200b caf\u00a0bar  \r\n\r\n\r\n\r\nend \ufeff"


def test_none_is_untouched():
    assert normalise_text(RAW, "none") is RAW
    conv = {"messages": [{"role": "assistant", "content": "\n\n x "}]}
    assert normalise(conv, "none") is conv


def test_basic_is_nfc_newlines_and_zero_width_only():
    # é composed, \u200b and the BOM gone, \r\n -> \n; the no-break space, the spaces around the text and
    # every blank line stay
    assert normalise_text(RAW, "basic") == "  \u00e9t\u00e9 caf\u00a0bar  \n\n\n\nend "
    assert normalise_text(CODE, "basic") == "Here:\n\n```python\nimport os\n\n\ndef f():  \n    return 1\n```\n"


def test_full_is_the_old_behaviour():
    assert normalise_text(RAW, "full") == "\u00e9t\u00e9 caf bar\n\nend"
    assert normalise_text(CODE, "full") == "Here:\n\n```python\nimport os\n\ndef f():\n    return 1\n```"


def test_basic_keeps_pep8_blank_lines_in_a_reply_but_not_whitespace_before_it():
    conv = {"messages": [{"role": "user", "content": "\n  indented question\n"},
                         {"role": "assistant", "content": "\n\n  x = 1\n\n\n    y = 2\n"}], "meta": {"k": 1}}
    out = normalise(conv, "basic")
    # whitespace before a reply's first character goes (see test_render for why); a user message is untouched
    assert out == {"messages": [{"role": "user", "content": "\n  indented question\n"},
                                {"role": "assistant", "content": "x = 1\n\n\n    y = 2\n"}], "meta": {"k": 1}}
    assert normalise(conv, "full")["messages"][1]["content"] == "x = 1\n\n    y = 2"


def test_unknown_mode():
    with pytest.raises(DataError, match="unknown data.normalize 'strip'; known: none, basic, full"):
        normalise_text("x", "strip")


def test_whitespace_only_is_empty():
    assert is_empty({"messages": [{"role": "user", "content": " \n\t"}, {"role": "assistant", "content": "a"}]})
    assert is_empty({"text": "\n\n  "})
    assert not is_empty({"messages": [{"role": "system", "content": " "}, {"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "a"}]})


def test_split_never_leaves_nothing_to_train_on():
    assert split(list(range(5)), val_size=4, seed=0)[1] != []
    assert len(split(list(range(5)), val_size=0.5, seed=0)[0]) == 3  # round(2.5) = 2 to validation
    with pytest.raises(DataError, match=r"data.val_size=5 asks for 5 validation examples but there are only 5"):
        split(list(range(5)), val_size=5, seed=0)
    with pytest.raises(DataError, match=r"data.val_size=0.9 asks for 1 validation examples but there are only 1"):
        split([0], val_size=0.9, seed=0)
