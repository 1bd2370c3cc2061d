"""The trained tokenizer: exact round trips, a plain Hugging Face directory, ChatML rendered by tunelab's
renderer exactly as apply_chat_template, single-id special tokens, the size asked for, and the
pre-tokenizer's properties (CJK runs, single digits) checked against the plain byte-level baseline."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.tokenizer.conftest import VOCAB
from tunelab.data.render import IGNORE_INDEX, build_renderer
from tunelab.data.templates import CHATML
from tunelab.errors import OutputExistsError, UserError
from tunelab.tokenizer.train import SPECIAL_TOKENS, build_tokenizer, train_tokenizer

ROUND_TRIP = [
    "小明有5个苹果，吃了2个，还剩几个？答：还剩3个。",
    "用Python写一个函数：def f(x): return x**2  # 平方",
    "Emoji: 😀👍🏽 👨‍👩‍👧 🇨🇳 ❤️ and 🤖",
    "日本語のテキスト、한국어 텍스트, русский текст, العربية, ελληνικά",
    "whitespace   runs\t\tand tabs  \n\n\n  indented\r\nwindows line\rold mac\n",
    "  leading and trailing spaces  ",
    "decomposed e\u0301 vs composed é, ligature ﬁ, full-width ＡＢＣ１２３",
    "rare Han 𠀀𪚥 and private use \ue000, zero-width\u200bspace, NUL\x00byte",
    "$\\frac{1}{2} + \\sqrt{3} \\approx 2.232$, 1,234,567.89 and 0.000001",
    "<|im_start|>user\nspecial tokens inside text<|im_end|>\n<|endoftext|>",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_exact(trained, text):
    ids = trained.encode(text)
    assert trained.decode(ids) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_round_trip_any_unicode(trained, text):
    assert trained.decode(trained.encode(text)) == text


def test_round_trip_held_out_corpus(trained, held_out):
    ids = trained(held_out)["input_ids"]
    assert [trained.decode(x) for x in ids] == held_out


def test_directory_is_plain_hugging_face(trained_dir, trained):
    assert sorted(p.name for p in trained_dir.iterdir() if p.name != ".tunelab") == ["tokenizer.json", "tokenizer_config.json",
                                                            "tokenizer_training.json"]
    config = json.loads((trained_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHATML  # the same text as tunelab's built-in chatml
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert trained.chat_template == CHATML
    assert (trained.eos_token, trained.pad_token, trained.bos_token) == ("<|endoftext|>", "<|endoftext|>", None)
    assert trained.pad_token != "<|im_end|>"  # pad must never be the end-of-turn token


def test_special_tokens_are_single_ids(trained):
    assert trained.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2]
    for i, t in enumerate(SPECIAL_TOKENS):
        assert trained.encode(t) == [i]
        assert trained.encode(f"a{t}b") == trained.encode("a") + [i] + trained.encode("b")
    assert set(SPECIAL_TOKENS) <= set(trained.all_special_tokens)


def test_vocabulary_size_as_asked(trained, trained_dir):
    assert len(trained) == VOCAB
    assert max(trained.get_vocab().values()) == VOCAB - 1
    summary = json.loads((trained_dir / "tokenizer_training.json").read_text())
    assert summary["vocab_size"] == summary["requested_vocab_size"] == VOCAB
    assert summary["texts"] == 400  # 200 questions + 200 outputs, one text per record


CONVERSATIONS = [
    [{"role": "user", "content": "What is 12 + 30?"},
     {"role": "assistant", "content": "12 + 30 = 42, so \\boxed{42}."}],
    [{"role": "system", "content": "你是一个数学老师。"},
     {"role": "user", "content": "小明有5个苹果，吃了2个，还剩几个？"},
     {"role": "assistant", "content": "5 - 2 = 3（个）。\n答：还剩3个。😀"},
     {"role": "user", "content": "Thanks! 再见"}, {"role": "assistant", "content": "Bye 👋 再见。"}],
    [{"role": "user", "content": "Write code"},
     {"role": "assistant", "content": "```python\ndef f(x):\n    return x  # 注释\n```"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_renderer_equals_apply_chat_template(trained, messages):
    renderer = build_renderer(trained)
    assert renderer.template == "tokenizer" and renderer.eot == "<|im_end|>"
    ids, labels = renderer.render(messages)
    assert ids == list(trained.apply_chat_template(messages, tokenize=True)["input_ids"])
    # the supervised tokens are exactly each assistant content followed by <|im_end|>, nothing else
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    runs += [cur] if cur else []
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [trained.decode(r) for r in runs] == [c + "<|im_end|>" for c in replies]
    assert all(r[-1] == 2 for r in runs)
    prompt = renderer.render_prompt(messages[:-1])
    assert ids[: len(prompt)] == prompt and trained.decode(prompt).endswith("<|im_start|>assistant\n")


def test_chinese_pre_tokenization_isolates_cjk_runs_and_digits():
    pre = build_tokenizer().pre_tokenizer
    pieces = [p for p, _ in pre.pre_tokenize_str("小明有12个苹果，用Python写了3行代码。では、カタカナ 한국어")]
    # byte-level pieces shown as text again
    from tokenizers.decoders import ByteLevel

    text = [ByteLevel().decode([p]) for p in pieces]
    assert text == ["小明有", "1", "2", "个苹果", "，用", "Python", "写了", "3", "行代码", "。では",
                    "、カタカナ", " 한국어"]


def _vocab_text(tok_dir):
    from tokenizers import Tokenizer
    from tokenizers.decoders import ByteLevel

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    dec = ByteLevel()
    return [dec.decode([t]) for t in tok.get_vocab()]


HAN = re.compile(r"[\u4e00-\u9fff]")
LATIN_OR_DIGIT = re.compile(r"[A-Za-z0-9]")


def test_no_token_mixes_han_with_latin_or_digits(trained_dir, tmp_path):
    def hybrids(d):
        return [t for t in _vocab_text(d) if HAN.search(t) and LATIN_OR_DIGIT.search(t)]

    assert hybrids(trained_dir) == []
    # the property is not free: where Latin letters touch Chinese often (math), GPT-2's regex learns hybrids
    corpus = tmp_path / "math.txt"
    corpus.write_text("".join(f"设x的值为{i}，求y的值。若a是b的{i}倍，则a的值是多少？\n" for i in range(50)))
    for pre, expect_hybrids in (("cjk", False), ("gpt2", True)):
        train_tokenizer([corpus], vocab_size=400, output=tmp_path / pre, pre_tokenizer=pre)
        assert bool(hybrids(tmp_path / pre)) is expect_hybrids, pre
    assert "x的值" in _vocab_text(tmp_path / "gpt2")


def test_digits_are_single_tokens(trained_dir, gpt2_dir, trained):
    assert [t for t in _vocab_text(trained_dir) if re.search(r"\d", t) and t not in "0123456789"] == []
    assert trained.tokenize("12345") == list("12345")
    assert any(re.fullmatch(r"\d{2,}", t) for t in _vocab_text(gpt2_dir))  # baseline merges digit runs


def test_latin_words_tokenized_alike_inside_chinese(trained):
    for word in ("Python", "function", "apples"):
        assert trained.tokenize(f"用{word}写") == trained.tokenize("用") + trained.tokenize(word) + trained.tokenize("写")


def test_chinese_compresses_better_than_plain_byte_level(trained, gpt2_dir, held_out):
    """Same corpus, size and trainer; only the pre-tokenizer differs. On held-out Chinese the CJK-aware
    split gives more characters per token (a punctuation mark joins the run after it, as in Qwen's
    pattern); on English the plain one wins, because it merges digit runs and we spell digits."""
    from transformers import AutoTokenizer

    from tunelab.tokenizer.compare import measure

    rows = measure({"cjk": trained, "gpt2": AutoTokenizer.from_pretrained(gpt2_dir)}, held_out)
    cpt = {(r["tokenizer"], r["language"]): r["chars_per_token"] for r in rows}
    assert cpt[("cjk", "zh")] > cpt[("gpt2", "zh")] * 1.02
    assert cpt[("cjk", "en")] < cpt[("gpt2", "en")]


def test_small_corpus_gives_smaller_vocabulary(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc abc abc\n")
    s = train_tokenizer([corpus], vocab_size=5000, output=tmp_path / "t")
    assert s["requested_vocab_size"] == 5000 and 259 < s["vocab_size"] < 300


def test_refuses_non_empty_output(tiny_corpus, tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        train_tokenizer([tiny_corpus], vocab_size=300, output=out)
    assert (out / "mine.txt").read_text() == "keep me"
    with pytest.raises(OutputExistsError, match="tunelab did not write"):  # a user's folder: never deleted
        train_tokenizer([tiny_corpus], vocab_size=300, output=out, overwrite=True)
    assert (out / "mine.txt").read_text() == "keep me"
    mine = tmp_path / "mine"
    train_tokenizer([tiny_corpus], vocab_size=300, output=mine)
    train_tokenizer([tiny_corpus], vocab_size=280, output=mine, overwrite=True)  # its own output: replaced
    assert (mine / "tokenizer.json").is_file() and (mine / ".tunelab").is_file()


@pytest.mark.parametrize("kwargs, message", [
    (dict(vocab_size=200), "too small: the 256 byte tokens and 3 special tokens alone take 259"),
    (dict(vocab_size=300, min_frequency=0), "min_frequency must be at least 1"),
    (dict(vocab_size=300, chat_template="nope"), "unknown chat template 'nope'; known: chatml, plain, alpaca"),
    (dict(vocab_size=300, special_tokens=["<|endoftext|>"]), r"needs the special tokens \['<\|im_start\|>'"),
    (dict(vocab_size=300, special_tokens=["<|im_end|>", "<|im_start|>"]), "must not be a ChatML turn token"),
])
def test_bad_arguments(tiny_corpus, tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        train_tokenizer([tiny_corpus], output=tmp_path / "t", **kwargs)
    assert not (tmp_path / "t").exists()
