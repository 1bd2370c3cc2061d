"""Prompts around the data: an optional system prompt and the math instruction.

Math data (conversations whose meta says `task: math`) gets an instruction appended to the user's
question, by default the Qwen-Math one, `Please reason step by step, and put your final answer
within \\boxed{}.`, or its Chinese counterpart when the question is Chinese. Evaluation builds its
prompts with the same function, so a model is asked at test time exactly as it was trained.
"""
from __future__ import annotations

import re
from typing import Any

EN_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
ZH_INSTRUCTION = "请一步一步推理，并把最终答案写在 \\boxed{} 中。"

_CJK = re.compile(r"[\u4e00-\u9fff]")


def is_chinese(text: str) -> bool:
    """True when at least 10% of the non-space characters are CJK ideographs."""
    chars = [c for c in text if not c.isspace()]
    return bool(chars) and len(_CJK.findall(text)) / len(chars) >= 0.1


def math_instruction(question: str, instruction: str = "auto") -> str:
    if instruction != "auto":
        return instruction
    return ZH_INSTRUCTION if is_chinese(question) else EN_INSTRUCTION


def apply_prompts(conv: dict[str, Any], *, system_prompt: str | None = None, instruction: str = "auto") -> dict[str, Any]:
    """Return a copy of `conv` with the system prompt set and the math instruction appended."""
    msgs = [dict(m) for m in conv["messages"]]
    if (conv.get("meta") or {}).get("task") == "math" and instruction != "":
        last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        question = msgs[last_user]["content"].rstrip()
        text = math_instruction(question, instruction)
        if text not in question:  # applying twice must not repeat it
            msgs[last_user]["content"] = f"{question}\n{text}"
    if system_prompt:
        if msgs[0]["role"] == "system":
            msgs[0]["content"] = system_prompt
        else:
            msgs.insert(0, {"role": "system", "content": system_prompt})
    return {**conv, "messages": msgs}
