"""Answer grading as three steps: extract an answer from a generation, normalise it, compare with gold.

Extraction lives in `tunelab.data.answers` (the same functions read the gold answers of the data).

Every step is a small pure function, shared by eval, experiments and any reward function, so that no
two commands grade the same answer differently. `grade(prediction, gold)` runs the extractors in a
fixed order (the first that finds something wins) and compares with `math_equal`, which accepts:
equal strings after `normalize_answer`, equal plain numbers (exact fractions, so 1/3 != 0.33), or
equality by math-verify (sympy) within a time limit. `gsm8k_verdicts` gives lm-evaluation-harness's
strict and flexible GSM8K numbers.

Decisions on ambiguous cases (each is tested in tests/evaluate/test_grading.py):
- Percent: `normalize_answer` drops `%`/`\\%` as lm-eval's MATH normaliser does, so "10\\%" matches
  "10" strictly; `math_equal` also lets a percentage equal its value / 100 ("50%" == "0.5").
- Wrappers: `\\text{..}`, `\\mathrm{..}`, `\\mbox{..}`, `\\textbf{..}` become their content; a single
  letter in parentheses is the letter, so "\\text{(C)}" matches "C".
- Units: English and Chinese units are dropped only when they follow a number, `}` or `)`, so a
  bare "m" (a variable) survives. "x = 3" becomes "3" only when the left side is one variable.

Run: `python -c "from tunelab.data.grading import grade; print(grade('The answer is 0.5.', '1/2'))"`.
"""
from __future__ import annotations

import re
import signal
import threading
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Callable

from .answers import EXTRACTORS, choice_letter, extract_hash_answer

# ---------------------------------------------------------------- normalise

_EN_UNITS = ("dollars,dollar,cents,cent,percent,degrees,degree,units,unit,square units,sq units,"
             "square feet,square meters,square metres,square inches,square cm,cubic feet,cubic meters,"
             "meters,meter,metres,metre,centimeters,centimetres,cm,mm,km,m,kilometers,kilometres,"
             "kilograms,kilogram,kg,grams,gram,g,pounds,pound,lbs,lb,ounces,oz,tons,"
             "inches,inch,feet,foot,ft,yards,yard,miles,mile,mph,km/h,liters,litres,liter,litre,ml,"
             "gallons,gallon,hours,hour,hrs,hr,minutes,minute,mins,min,seconds,second,sec,"
             "days,day,weeks,week,months,month,years,year").split(",")
_ZH_UNITS = ("个 元 元钱 角 分 块钱 米 厘米 毫米 分米 千米 公里 平方米 平方厘米 平方分米 平方千米 立方米 "
             "立方厘米 公顷 本 千克 公斤 克 斤 吨 升 毫升 天 小时 分钟 秒 周 年 月 岁 人 名 位 只 条 张 支 "
             "朵 颗 盒 辆 台 件 次 页 箱 袋 瓶 棵 块 份 头 匹 双 套 道 篇 根 把 杯 筐 层 度 倍 千瓦时").split()
# Longest first so "square meters" wins over "meters" and "平方米" over "米".
_UNIT_ALT = "|".join(re.escape(u).replace(r"\ ", r"\s+")
                     for u in sorted(set(_EN_UNITS + _ZH_UNITS), key=len, reverse=True))
_UNIT_RE = re.compile(rf"(?<=[\d}})])\s*[(（]?\s*(?:{_UNIT_ALT})\s*[)）]?\s*$")
_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20, 0x3002: 0x2E}


def normalize_answer(s: str) -> str:
    """Canonical string form of an answer, for exact comparison (see the module docstring)."""
    s = s.translate(_FULLWIDTH).strip()
    s = re.sub(r"\\(?:!|,|;|:|\s)", " ", s)  # LaTeX spacing commands
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)  # but keep \rightarrow
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    for _ in range(3):  # \text{\textbf{x}} needs two rounds; three is plenty
        s = re.sub(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    m = re.fullmatch(r"\s*(?:[A-Za-z](?:_\{?\w+\}?)?|\\[A-Za-z]+)\s*=\s*([^=]+)", s)
    if m:  # "x = 3" -> "3", one variable on the left only
        s = m.group(1)
    for _ in range(3):  # "5 square meters", "3/4（吨）", "2 m)" ...
        s = _UNIT_RE.sub("", s).strip()
    s = re.sub(r"(\\(?!sqrt|frac)[A-Za-z]+)\s+(?=[A-Za-z])", r"\1{}", s)  # keep "\pi r" != "\pir"
    s = re.sub(r"\s+", "", s)
    s = s.replace("{,}", "")  # LaTeX thousands separator 1{,}000
    if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"\\sqrt([^{\\])", r"\\sqrt{\1}", s)  # \sqrt2 -> \sqrt{2}
    s = re.sub(r"\\frac([^{\\])", r"\\frac{\1}", s)  # \frac34 -> \frac{3}{4}
    s = re.sub(r"\\frac(\{[^{}]*\})([^{\\])", r"\\frac\1{\2}", s)
    s = s.lstrip("+").rstrip(".")
    s = re.sub(r"(\d)\.(\d+)", lambda m: f"{m[1]}.{m[2].rstrip('0')}", s)  # 0.50 -> 0.5, 2.0 -> 2.
    s = re.sub(r"(\d)\.(?!\d)", r"\1", s)
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)  # .5 -> 0.5
    if re.fullmatch(r"\([A-Za-z]\)", s):  # "(C)" -> "C"
        s = s[1]
    return s.lower()


# ---------------------------------------------------------------- compare


def strict_match(pred: str | None, gold: str) -> bool:
    """Equal, non-empty strings after `normalize_answer`."""
    if pred is None:
        return False
    p, g = normalize_answer(pred), normalize_answer(gold)
    return bool(p) and p == g


def _numbers(s: str) -> set[Fraction]:
    """A plain number's exact values ({v}, or {v, v/100} for a percentage); empty if not a number."""
    n = normalize_answer(s)
    m = (re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?", n)
         or re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", n))
    if m is None or len(n) > 60:  # 60 digits is no answer; avoids huge Fraction work
        return set()
    try:
        v = Fraction(m.group(1) + m.group(2)) / Fraction(m.group(3)) if m.lastindex == 3 else Fraction(n)
    except (ValueError, ZeroDivisionError):
        return set()
    return {v, v / 100} if "%" in s else {v}


def _plainly_apart(a: set[Fraction], b: set[Fraction]) -> bool:
    """Two plain numbers that math-verify cannot call equal: it compares numbers exactly, or rounded to 6
    decimals when one is a float, so values further apart than 1e-4 of their size never are. Answering
    here skips its parse and sympy (~20-40 ms an answer: a GRPO step grades G completions a prompt)."""
    return bool(a and b) and all(abs(x - y) > Fraction(1, 10_000) * max(1, abs(x), abs(y)) for x in a for y in b)


class _Deadline(BaseException):
    """Raised by our alarm; a BaseException so that math-verify's `except Exception` cannot swallow it."""


def _within(seconds: float | None, fn: Callable[[], bool]) -> bool | None:
    """fn() if it finishes within `seconds`, else None.

    In the main thread a SIGALRM timer interrupts fn itself. It re-fires every 50 ms until fn is
    stopped, because an exception raised inside a gc or weakref callback is printed and dropped
    (seen with hypothesis's gc callback), so one alarm can be lost. Elsewhere (signals are main-thread
    only, or a caller's own alarm is running) fn runs in a daemon thread that we stop waiting for:
    control comes back in time, but the abandoned computation keeps a CPU busy until it ends.
    """
    if not seconds or seconds <= 0:
        return fn()
    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if main and signal.getitimer(signal.ITIMER_REAL)[0] == 0:
        armed = [True]

        def alarm(signum, frame):
            if armed[0]:  # a tick already on its way when we disarm must not raise outside the try
                raise _Deadline

        old = signal.signal(signal.SIGALRM, alarm)
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, seconds, 0.05)
                return fn()
            finally:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Deadline:  # also when it fires between fn's return and the disarming
            return None
        finally:
            signal.signal(signal.SIGALRM, old)
    box: list[bool] = []

    def run() -> None:
        try:
            box.append(fn())
        except Exception:  # same as in the main thread: an error is "not shown equal"
            box.append(False)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    return box[0] if box else None


@lru_cache(maxsize=1)
def _math_verify():
    """Import math-verify on first use (it pulls in sympy and antlr: ~1 s) and quiet one warning."""
    import logging

    import math_verify

    # We pass timeouts of None because math-verify's own are whole seconds and use signal.alarm,
    # which would cancel our timer; it then warns that timeouts are off. They are, ours are on.
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(lambda r: "Timeout is disabled" not in r.getMessage())
    config = [math_verify.LatexExtractionConfig(), math_verify.ExprExtractionConfig()]
    return math_verify, config


def _as_latex(s: str) -> str:
    """math-verify reads LaTeX only inside math delimiters: add `$..$` unless some are there."""
    s = s.strip()
    return s if "$" in s or s.startswith(("\\[", "\\(")) else f"${s}$"


def _verify(pred: str, gold: str) -> bool:
    mv, config = _math_verify()
    g = mv.parse(_as_latex(gold), extraction_config=config, parsing_timeout=None)
    p = mv.parse(_as_latex(pred), extraction_config=config, parsing_timeout=None)
    # Order matters: math-verify treats its first argument as the gold answer.
    return bool(g and p and mv.verify(g, p, timeout_seconds=None))


def math_equal(pred: str | None, gold: str, timeout_s: float = 5.0) -> bool:
    """Mathematically equal: strict_match, then exact plain numbers (equal, or plainly apart: not equal),
    then math-verify within timeout_s.

    math-verify's parse + verify together get `timeout_s` seconds; on a timeout or any error the
    answer counts as equal only if strict_match said so (it did not, or we would not be here).
    """
    if pred is None:
        return False
    p_num, g_num = _numbers(pred), _numbers(gold)
    if strict_match(pred, gold) or (p_num & g_num):
        return True
    if _plainly_apart(p_num, g_num) and "%" not in pred + gold:
        return False
    try:
        _math_verify()  # import outside the time limit: an import cut short would stay half-done
        return bool(_within(timeout_s, lambda: _verify(pred, gold)))
    except Exception:  # a parser bug on odd input is a wrong answer, never a crash
        return False


# ---------------------------------------------------------------- grade


@dataclass
class Verdict:
    extracted: str | None  # the answer found in the prediction
    correct: bool  # by the requested comparison
    strict: bool  # by strict_match, whatever the comparison
    method: str  # the extractor that found it, or "none"


COMPARES = ("math", "choice", "strict")
DEFAULT_EXTRACTORS = ("boxed", "answer_is", "hash", "chinese", "last_number")


def grade(prediction: str, gold: str, *, extractors: tuple[str, ...] | None = None,
          compare: str = "math", timeout_s: float = 5.0) -> Verdict:
    """Extract with the first extractor that finds a non-blank answer, then compare with gold.

    extractors=None means ("choice",) when compare="choice", else DEFAULT_EXTRACTORS.
    """
    if extractors is None:
        extractors = ("choice",) if compare == "choice" else DEFAULT_EXTRACTORS
    unknown = [e for e in extractors if e not in EXTRACTORS]
    if unknown:
        raise ValueError(f"unknown extractor(s) {unknown}; known: {sorted(EXTRACTORS)}")
    if compare not in COMPARES:
        raise ValueError(f"unknown compare {compare!r}; known: {list(COMPARES)}")
    if not isinstance(prediction, str):  # a missing generation (None) is simply wrong
        return Verdict(None, False, False, "none")
    for name in extractors:
        found = EXTRACTORS[name](prediction)
        if found is not None and found.strip():
            break
    else:
        return Verdict(None, False, False, "none")
    strict = strict_match(found, gold)
    if compare == "choice":
        letter = choice_letter(found) or found.strip().upper()
        correct = letter == (choice_letter(gold) or gold.strip().upper())
    elif compare == "math":
        correct = math_equal(found, gold, timeout_s)
    else:
        correct = strict
    return Verdict(found, correct, strict, name)


def gsm8k_verdicts(prediction: str, gold: str) -> dict[str, Verdict]:
    """lm-evaluation-harness's two GSM8K scores; they differ only in where the answer may come from.

    "strict" reads only `\\boxed{}` or `#### N`; "flexible" also "the answer is N" and the last number.
    Both compare with strict_match (exact after normalisation: "1,234" == "1234", "72.0" == "72").
    `gold` may be the number or GSM8K's whole answer field ending in "#### N".
    """
    gold = extract_hash_answer(gold) or gold
    return {
        "strict": grade(prediction, gold, extractors=("boxed", "hash"), compare="strict"),
        "flexible": grade(prediction, gold, extractors=("boxed", "hash", "answer_is", "last_number"),
                          compare="strict"),
    }
