"""Few-shot prompts for rollouts: fixed exemplar sets, seeded samples of a training split, and how
both are laid out for base models (plain text) or chat models (turns).

    shots = exemplars("gsm8k_cot", 8)                     # [(question, worked answer)] * 8
    text, stops = plain_prompt("gsm8k_cot", shots, question)

Exemplar sets (structure and text as lm-evaluation-harness ships them):
- `gsm8k_cot`: the 8 chain-of-thought exemplars of Wei et al. (2022) in lm-eval's `gsm8k_cot`:
  "Q: {question}\nA: {worked answer ending 'The answer is N.'}\n\n" x 8, then "Q: {question}\nA:";
  generation stops at "Q:" (and the end-of-turn tokens);
- `minerva_math`: the 4 exemplars of Lewkowycz et al. (2022) in lm-eval's `minerva_math`:
  "Problem:\n{problem}\n\nSolution: {solution ... Final Answer: The final answer is X. I hope it
  is correct.}\n\n" x 4, then "Problem:\n{problem}\n\nSolution:"; stops at "Problem:".
Any other task draws K examples with a seed from a data source that is not its test set (the
task's `fewshot` source, e.g. the arith generator with training's seed 0, or `--fewshot-data`),
laid out as "Question: ...\nAnswer: ...\n\n" ("问题：" / "答案：" for Chinese), stopping at the
next "Question:" / "问题：".
In chat mode (a chat model) the shots become user/assistant turns before the question
(`--fewshot-as-multiturn`) or are folded, as plain text, into the one user message.
"""
from __future__ import annotations

import random
from typing import Any

from ..errors import DataError

GSM8K_COT: list[tuple[str, str]] = [
    ('There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?',
     'There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.'),
    ('If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?',
     'There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.'),
    ('Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?',
     'Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39.'),
    ('Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?',
     'Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8.'),
    ('Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?',
     'Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9.'),
    ('There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?',
     'There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.'),
    ('Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?',
     'Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.'),
    ('Olivia has $23. She bought five bagels for $3 each. How much money does she have left?',
     'Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.'),
]

MINERVA_MATH: list[tuple[str, str]] = [
    ('Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.',
     'The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.'),
    ('If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$',
     'We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct.'),
    ('Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times must Terrell lift them in order to lift the same total weight?',
     'If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\nFinal Answer: The final answer is $16$. I hope it is correct.'),
    ('If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is nonzero.',
     'If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.'),
]

EXEMPLARS = {"gsm8k_cot": GSM8K_COT, "minerva_math": MINERVA_MATH}
# (question prefix, separator before the answer, answer's leading delimiter, stop strings)
LAYOUTS = {"gsm8k_cot": ("Q: ", "\nA:", " ", ["Q:"]),
           "minerva_math": ("Problem:\n", "\n\nSolution:", " ", ["Problem:"]),
           "en": ("Question: ", "\nAnswer:", " ", ["Question:"]),
           "zh": ("问题：", "\n答案：", "", ["问题："])}


def exemplars(name: str, k: int) -> list[tuple[str, str]]:
    if k > len(EXEMPLARS[name]):
        raise DataError(f"--n-shot {k}: the {name} prompt has {len(EXEMPLARS[name])} exemplars")
    return EXEMPLARS[name][:k]


def sample(source: str, k: int, seed: int, exclude: set[str] = frozenset()) -> list[tuple[str, str]]:
    """K (question, reference reply) pairs drawn with `seed` from `source` (a data source name or file),
    skipping questions in `exclude` (the scored items), read through the usual converters."""
    from ..data.clean import normalise
    from ..data.sources import load_conversations

    convs = load_conversations(source, seed=0)  # generated sets: training's seed, never the eval seed
    pairs = []
    for c in convs:
        c = normalise(c, "basic")  # as the scored items are, so that `exclude` compares like with like
        users = [m for m in c["messages"] if m["role"] == "user"]
        replies = [m for m in c["messages"] if m["role"] == "assistant"]
        if users and replies and users[0]["content"] not in exclude:
            pairs.append((users[0]["content"], replies[-1]["content"]))
    if len(pairs) < k:
        raise DataError(f"--n-shot {k}: {source} has {len(pairs)} usable examples")
    return random.Random(seed).sample(pairs, k)


def layout(name: str, question: str) -> str:
    """`gsm8k_cot` / `minerva_math`, or "en"/"zh" for the generic layout by the question's language."""
    if name in LAYOUTS:
        return name
    from ..data.prompts import is_chinese

    return "zh" if is_chinese(question) else "en"


def plain_prompt(style: str, shots: list[tuple[str, str]], question: str) -> tuple[str, list[str]]:
    """(prompt text, stop strings) for a base model."""
    prefix, sep, delim, stops = LAYOUTS[layout(style, question)]
    text = "".join(f"{prefix}{q}{sep}{delim}{a}\n\n" for q, a in shots)
    return f"{text}{prefix}{question}{sep}", stops


def chat_prompt(style: str, shots: list[tuple[str, str]], messages: list[dict[str, str]],
                multiturn: bool) -> list[dict[str, Any]]:
    """The item's chat messages with the shots before its question: as turns, or folded into it."""
    *head, last = messages
    if multiturn:
        turns = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        return [*head, *turns, last]
    prefix, sep, delim, _ = LAYOUTS[layout(style, last["content"])]
    text = "".join(f"{prefix}{q}{sep}{delim}{a}\n\n" for q, a in shots)
    return [*head, {**last, "content": text + last["content"]}]
