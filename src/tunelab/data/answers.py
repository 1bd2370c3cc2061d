"""Answer extraction: the final answer of a text, for gold answers and predictions alike.

One module for every reader of answers: data readers take the gold answer of a MATH solution
(`last_boxed`) or a GSM8K answer field (`split_hash_answer`) with it, and grading takes the answer
a model gave with the very same functions, so a `\\boxed{}` or `#### N` can never be read two ways.

Extractors, each `text -> str | None` (None: nothing found), registered in `EXTRACTORS`:
- `boxed`: the last complete `\\boxed{..}` / `\\fbox{..}` (nested braces kept), or `\\boxed 5`;
- `hash`: GSM8K's `#### N` (commas between digits removed);
- `answer_is`: what follows the last "the answer is";
- `chinese`: the number of the last "答：" / "答案是" / "答案为" / "答案：" sentence, or "=N（unit）";
  an "答案：" line without a number gives its text ("答案：小红" -> "小红"), BELLE school_math's
  convention (`final_answer_line` reads gold answers the same way);
- `last_number`: the last number in the text (lm-eval's flexible fallback);
- `choice`: a multiple-choice letter ("答案是C", "(B)", `\\boxed{C}`, a final letter).
Every extractor is linear in the length of its input (tested on 100,000-character inputs).

Run: `python -c "from tunelab.data.answers import last_boxed; print(last_boxed('so \\boxed{\\frac{1}{2}}'))"`.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

# The lookbehind keeps "10-3" from yielding "-3" and "1.5" from yielding ".5" or "5".
_NUMBER = r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?(?:\\?%)?"
_NUMBER_RE = re.compile(_NUMBER)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BOXED_ARG_RE = re.compile(r"\s*(\{)|\s+([^\s$]+)|")  # what follows: a brace, or a bare token


def _clean_number(s: str) -> str:
    return s.replace(",", "").replace("\\%", "%")


def _brace_pairs(text: str) -> dict[int, int]:
    """Index of each `{` -> index of its matching `}`, in one linear pass (unbalanced ones are absent)."""
    pairs, stack = {}, []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
    return pairs


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{..}` / `\\fbox{..}` (nested braces kept), or of `\\boxed 5`."""
    pairs = None  # computed once, and no slicing per match: huge inputs stay linear
    for m in reversed(list(_BOXED_RE.finditer(text))):
        after = _BOXED_ARG_RE.match(text, m.end())
        if after.group(1):  # `\boxed{...}`
            pairs = _brace_pairs(text) if pairs is None else pairs
            if after.start(1) in pairs:
                return text[after.start(1) + 1:pairs[after.start(1)]].strip()
        elif after.group(2):  # `\boxed 7`: up to whitespace or `$`
            return after.group(2)
    return None


def extract_hash_answer(text: str) -> str | None:
    """GSM8K's `#### N`: the text after the last `####` on its line, commas between digits removed."""
    found = re.findall(r"####[ \t]*([^\n]*)", text)
    if not found:
        return None
    answer = re.sub(r"(?<=\d),(?=\d)", "", found[-1]).strip()
    return answer or None


def _strip_wrappers(s: str) -> str:
    s = s.strip().strip("*").strip()  # markdown bold around an answer
    s = re.sub(r"^\\[(\[]|\\[)\]]$", "", s).strip()
    s = s.rstrip(".。").strip().strip("$").strip()
    if s.startswith(("\\boxed", "\\fbox")):
        s = last_boxed(s) or s
    return s.rstrip(".").strip()


def extract_answer_is(text: str) -> str | None:
    """What follows the last "the (final) answer is[:]", up to the end of that line or sentence."""
    matches = list(re.finditer(r"answer\s+is\s*[:：]?[ \t]*", text, flags=re.IGNORECASE))
    if not matches:
        return None
    line = text[matches[-1].end():].split("\n", 1)[0]
    line = re.split(r"\.(?=\s|$)|。", line, maxsplit=1)[0]  # a sentence ends at ". " but not in "3.5"
    return _strip_wrappers(line) or None


# "答：这条鱼24元钱。" / "答案是..." / "答案为..." / "答案：...": the number in that sentence.
_ZH_MARKER_RE = re.compile(r"答案\s*(?:是|为|[:：])|答\s*[:：]")
_ZH_SENTENCE_END_RE = re.compile(r"[。！？!?；;\n]|\.(?!\d)")
# "=3/4（吨）": a result followed by a unit in parentheses, the way Chinese solutions end equations.
_ZH_RESULT_RE = re.compile(r"=\s*(" + _NUMBER + r")\s*[（(]\s*[\u4e00-\u9fff]{1,4}\s*[)）]")
# "答案：" as a line of its own ("\n答案：12个。"): BELLE school_math's final-answer convention.
_ANSWER_LINE_RE = re.compile(r"答案\s*[:：][ \t]*([^\n]*)")
_PHRASE_MAX = 30  # an answer phrase longer than this is a sentence, not an answer


def extract_chinese_answer(text: str) -> str | None:
    """The number in the last Chinese answer sentence ("答：", "答案是", "答案为", "答案：") or "=N（unit）";
    an "答案：" line with no number gives its text (a name, a word, a letter)."""
    candidates = [(m.start(), m.group(1)) for m in _ZH_RESULT_RE.finditer(text)][-1:]
    # The answer is in one of the last answer sentences; looking at the last 50 markers at most keeps a
    # pathological input ("答：" repeated 100,000 times, no number) linear instead of 100,000 searches.
    for m in reversed(list(_ZH_MARKER_RE.finditer(text))[-50:]):
        # An answer sentence is short: reading at most 300 characters keeps huge inputs linear.
        limit = min(len(text), m.end() + 300)
        end = _ZH_SENTENCE_END_RE.search(text, m.end(), limit)
        numbers = _NUMBER_RE.findall(text, m.end(), end.start() if end else limit)
        if numbers:  # several numbers ("24+6=30个"): the last is the result
            candidates.append((m.start(), _clean_number(numbers[-1])))
            break
        if m.group().endswith((":", "：")) and m.group().startswith("答案"):
            phrase = _strip_wrappers(text[m.end():end.start() if end else limit])
            if phrase and len(phrase) <= _PHRASE_MAX:
                candidates.append((m.start(), phrase))
                break
    return _clean_number(max(candidates)[1]) if candidates else None  # the latest one wins


def final_answer_line(text: str) -> str | None:
    """Gold answer of a solution that ends with an "答案：..." line (BELLE school_math): what
    `extract_chinese_answer` reads from that last line, or None when the text has no such line."""
    lines = list(_ANSWER_LINE_RE.finditer(text))
    return extract_chinese_answer(text[lines[-1].start():]) if lines else None


def extract_last_number(text: str) -> str | None:
    """The last number in the text: "-3", "1,234" (-> "1234"), "2.5", "3/4", "25%"."""
    numbers = _NUMBER_RE.findall(text)
    return _clean_number(numbers[-1]) if numbers else None


@lru_cache(maxsize=8)
def _choice_patterns(letters: str) -> tuple[re.Pattern, re.Pattern]:
    # A bare letter must be upper case (English "a" is a word); in parentheses either case will do.
    letter = rf"(?:[(（]\s*([{letters}{letters.lower()}])\s*[)）]|([{letters}])(?![A-Za-z]))"
    marker = (r"(?i:answer\s+is|answer\s*[:：]|correct\s+(?:answer|option|choice)\s+is|option\s+is"
              r"|答案\s*(?:应该?)?(?:是|为|选)?|(?:故|所以|因此|应)?选(?:择|项)?)\s*[:：]?\s*")
    return (re.compile(marker + letter),
            re.compile(rf"(?:^|[^A-Za-z]){letter}[\s.。!！]*$"))


def choice_letter(s: str, letters: str = "ABCDE") -> str | None:
    """"C", "(c)", "\\text{(C)}", "C." -> "C"; anything else -> None."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    s = s.strip().strip("$").strip().strip("()（）").strip().rstrip(".。").strip()
    return s.upper() if len(s) == 1 and s.upper() in letters else None


def extract_choice(text: str, letters: str = "ABCDE") -> str | None:
    """A multiple-choice letter: from `\\boxed{C}`, "答案是C", "选C", "answer is (B)", or a final letter."""
    boxed = last_boxed(text)
    if boxed is not None and (letter := choice_letter(boxed, letters)):
        return letter
    marked, final = _choice_patterns(letters)
    hits = list(marked.finditer(text))
    if hits:
        return (hits[-1].group(1) or hits[-1].group(2)).upper()
    m = final.search(text[-200:])  # "the final standalone letter" only needs the tail
    return (m.group(1) or m.group(2)).upper() if m else None


def split_hash_answer(text: str) -> tuple[str, str] | None:
    """GSM8K's answer field -> (the reasoning before the last `####`, the final answer), or None."""
    cut = text.rfind("####")
    if cut < 0:
        return None
    answer = extract_hash_answer(text[cut:])
    return (text[:cut], answer) if answer else None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "boxed": last_boxed,
    "hash": extract_hash_answer,
    "answer_is": extract_answer_is,
    "chinese": extract_chinese_answer,
    "last_number": extract_last_number,
    "choice": extract_choice,
}
