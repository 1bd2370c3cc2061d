"""Prompts around the data: an optional system prompt and the math instruction.

Math data (conversations whose meta says `task: math`) gets an instruction appended to the user's
question, by default the Qwen-Math one, `Please reason step by step, and put your final answer
within \\boxed{}.`, or its Chinese counterpart when the question is Chinese. Data whose targets
end another way say so in meta `answer_format`, and get an instruction that asks for that ending:
BELLE school_math (`answer_format: answer_line`) ends its solutions with a line `答案：...`.
Evaluation builds its prompts with the same function, so a model is asked at test time exactly as it
was trained, for the ending its targets have.
"""
from __future__ import annotations

import re
from typing import Any

EN_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
ZH_INSTRUCTION = "请一步一步推理，并把最终答案写在 \\boxed{} 中。"
# For targets that end with a line "答案：..." (BELLE school_math): ask for exactly that line.
ANSWER_LINE_INSTRUCTION = "请一步一步推理，并在最后一行写出“答案：”和最终答案。"

_CJK = re.compile(r"[\u4e00-\u9fff]")


def is_chinese(text: str) -> bool:
    """True when at least 10% of the non-space characters are CJK ideographs."""
    chars = [c for c in text if not c.isspace()]
    return bool(chars) and len(_CJK.findall(text)) / len(chars) >= 0.1


def math_instruction(question: str, instruction: str = "auto", answer_format: str = "boxed") -> str:
    if instruction != "auto":
        return instruction
    if answer_format == "answer_line":
        return ANSWER_LINE_INSTRUCTION
    return ZH_INSTRUCTION if is_chinese(question) else EN_INSTRUCTION


def without_instruction(content: str, instruction: str | None = None) -> str:
    """A user message without the math instruction `apply_prompts` appended to it (`instruction`, else
    one of the defaults); a message without one comes back unchanged. Evaluation compares the bare
    question with retrieved passages (the leakage check), which the instruction would dilute."""
    for text in filter(None, (instruction, EN_INSTRUCTION, ZH_INSTRUCTION, ANSWER_LINE_INSTRUCTION)):
        if content.endswith(f"\n{text}"):
            return content[:-len(text) - 1]
    return content


def apply_prompts(conv: dict[str, Any], *, system_prompt: str | None = None, instruction: str = "auto") -> dict[str, Any]:
    """Return a copy of `conv` with the system prompt set and the math instruction appended."""
    msgs = [dict(m) for m in conv["messages"]]
    meta = conv.get("meta") or {}
    if meta.get("task") == "math" and instruction != "":
        last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        question = msgs[last_user]["content"].rstrip()
        text = math_instruction(question, instruction, meta.get("answer_format", "boxed"))
        if text not in question:  # applying twice must not repeat it
            msgs[last_user]["content"] = f"{question}\n{text}"
    if system_prompt:
        if msgs[0]["role"] == "system":
            msgs[0]["content"] = system_prompt
        else:
            msgs.insert(0, {"role": "system", "content": system_prompt})
    return {**conv, "messages": msgs}
