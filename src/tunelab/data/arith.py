"""arith: tunelab's built-in synthetic data set of grade-school math word problems.

Two- and three-step problems (+, -, ×, ÷) in English and Chinese, each with a step-by-step solution
ending in `\\boxed{answer}` and the exact answer as a field. It is the quickstart's default data
(`tunelab prepare` with `data.name=arith`) and needs no download, so examples and tests run offline.
Directly: `from tunelab.data.arith import generate; generate(1000, lang="mix", seed=0)`.

Output depends only on (n, lang, seed): the only randomness is a private `random.Random(seed)` and all
arithmetic uses `Fraction`, so data is byte-identical on any machine. Draws never depend on the
language, so the "en" and "zh" outputs for one seed are translations of each other (same numbers and
answers), and `generate(k)` is a prefix of `generate(n)` for k <= n.
"""
from __future__ import annotations

import random
from fractions import Fraction

LANGS = ("en", "zh", "mix")

# Parallel (en, zh) pools: drawn by index so English and Chinese consume the same random numbers.
_NAMES = [("Lily", "She", "小红", "她"), ("Tom", "He", "小明", "他"), ("Emma", "She", "小丽", "她"),
          ("Jack", "He", "小刚", "他"), ("Mia", "She", "小芳", "她"), ("Leo", "He", "小强", "他"),
          ("Anna", "She", "小雪", "她"), ("Ben", "He", "小军", "他")]
_THINGS = [("apples", "苹果", "个"), ("oranges", "橘子", "个"), ("pears", "梨", "个"),
           ("books", "书", "本"), ("notebooks", "练习本", "本"), ("pencils", "铅笔", "支"),
           ("flowers", "花", "朵"), ("stickers", "贴纸", "张"), ("cards", "卡片", "张"),
           ("marbles", "玻璃球", "颗"), ("balloons", "气球", "个"), ("eggs", "鸡蛋", "个")]
# English singular must take "a" (consonant sound) because the templates write "a {item}".
_GOODS = [("notebook", "notebooks", "笔记本", "本"), ("pen", "pens", "钢笔", "支"),
          ("ball", "balls", "皮球", "个"), ("cup", "cups", "杯子", "个"), ("kite", "kites", "风筝", "个"),
          ("toy car", "toy cars", "玩具车", "辆"), ("storybook", "storybooks", "故事书", "本"),
          ("ruler", "rulers", "尺子", "把")]

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b,
        "×": lambda a, b: a * b, "÷": lambda a, b: a / b}
_ORD = {"en": {2: ("First", "Then"), 3: ("First", "Next", "Finally")},
        "zh": {2: ("第一步", "第二步"), 3: ("第一步", "第二步", "第三步")}}


def fmt(x: int | Fraction) -> str:
    """Exact decimal text of a number with at most 2 decimal places (money), no float rounding."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    if (cents := x * 100).denominator != 1 or x < 0:
        raise AssertionError(f"arith generated a non-representable number {x}")
    return f"{cents.numerator // 100}.{cents.numerator % 100:02d}".rstrip("0")


def _price(r: random.Random, lo: int = 10, hi: int = 150) -> Fraction:
    return Fraction(r.randint(lo, hi), 10)  # tenths of a yuan: products with counts stay exact


def _paid(total: Fraction) -> int:
    return next(b for b in (10, 20, 50, 100, 200) if b > total)  # a round sum that leaves change


class _Problem:
    """Draws from the shared rng and records solution steps for one problem in one language."""

    def __init__(self, r: random.Random, lang: str):
        self.r, self.lang, self.steps = r, lang, []

    def t(self, en: str, zh: str) -> str:
        return en if self.lang == "en" else zh

    def names(self, k: int) -> list[tuple[str, str]]:
        """k distinct (name, capitalised pronoun) pairs in this language."""
        picked = self.r.sample(range(len(_NAMES)), k)
        return [_NAMES[i][:2] if self.lang == "en" else _NAMES[i][2:] for i in picked]

    def thing(self) -> tuple[str, str]:
        """(noun, zh measure word); in English the noun is plural and the measure word unused."""
        en, zh, mw = _THINGS[self.r.randrange(len(_THINGS))]
        return (en if self.lang == "en" else zh), mw

    def goods(self, k: int = 1) -> list[tuple[str, str, str]]:
        """k distinct (singular, plural, zh measure word); Chinese has one form for both."""
        picked = [_GOODS[i] for i in self.r.sample(range(len(_GOODS)), k)]
        return [(g[0], g[1], g[3]) if self.lang == "en" else (g[2], g[2], g[3]) for g in picked]

    def step(self, what_en: str, what_zh: str, a, op: str, b, unit: str) -> Fraction:
        c = _OPS[op](Fraction(a), Fraction(b))
        # Counts of things must stay whole; only money may carry decimals.
        if c < 0 or (unit != "元" and c.denominator != 1):
            raise AssertionError(f"arith template produced {a} {op} {b} = {c}")
        self.steps.append((self.t(what_en, what_zh), a, op, b, c, unit))
        return c

    def solution(self, final: str, answer: str) -> str:
        lines = []
        for o, (what, a, op, b, c, unit) in zip(_ORD[self.lang][len(self.steps)], self.steps):
            eq = f"{fmt(a)} {op} {fmt(b)} = {fmt(c)}"
            lines.append(f"{o}, {what}: {eq}." if self.lang == "en" else f"{o}，{what}：{eq}（{unit}）。")
        lines.append(f"{final} \\boxed{{{answer}}}" if self.lang == "en" else f"{final}\\boxed{{{answer}}}")
        return "\n".join(lines)


# Each template draws its numbers, records its steps and returns (question, final sentence, unit).
# Operands are built backwards from the result where they must divide exactly or stay positive.

def _give_away(p: _Problem):
    (n, he), (f, _) = p.names(2)
    obj, mw = p.thing()
    a, b = p.r.randint(10, 120), p.r.randint(5, 80)
    c = p.r.randint(2, a + b - 1)
    s = p.step(f"find how many {obj} {n} has after buying more", "买来以后一共有多少" + mw, a, "+", b, mw)
    x = p.step(f"take away the {obj} given to {f}", f"送给{f}以后还剩多少{mw}", s, "-", c, mw)
    return (p.t(f"{n} has {a} {obj}. {he} buys {b} more and then gives {c} to {f}. "
                f"How many {obj} does {n} have now?",
                f"{n}有{a}{mw}{obj}，又买了{b}{mw}，然后送给{f}{c}{mw}。{n}现在有多少{mw}{obj}？"),
            p.t(f"So {n} has {fmt(x)} {obj} now.", f"答：{n}现在有{fmt(x)}{mw}{obj}。"), p.t(obj, mw))


def _boxes(p: _Problem):
    (n, he), = p.names(1)
    obj, mw = p.thing()
    a, b, c = p.r.randint(2, 12), p.r.randint(2, 24), p.r.randint(3, 60)
    s = p.step(f"find how many {obj} are in the boxes", f"{a}盒一共有多少{mw}", a, "×", b, mw)
    x = p.step(f"add the {obj} {n} already had", f"加上原来的{c}{mw}", s, "+", c, mw)
    return (p.t(f"{n} buys {a} boxes of {obj} with {b} {obj} in each box. {he} already had {c} {obj}. "
                f"How many {obj} does {n} have in total?",
                f"{n}买了{a}盒{obj}，每盒{b}{mw}。{he}原来有{c}{mw}{obj}。{n}现在一共有多少{mw}{obj}？"),
            p.t(f"So {n} has {fmt(x)} {obj} in total.", f"答：{n}现在一共有{fmt(x)}{mw}{obj}。"), p.t(obj, mw))


def _share(p: _Problem):
    (n, he), = p.names(1)
    obj, mw = p.thing()
    k, q = p.r.randint(2, 9), p.r.randint(3, 25)
    a = p.r.randint(2, k * q - 2)
    b = k * q - a
    s = p.step(f"find how many {obj} {n} got on the two days", "两天一共得到多少" + mw, a, "+", b, mw)
    x = p.step(f"share them among {k} friends", f"平均分给{k}个朋友，每人分到多少{mw}", s, "÷", k, mw)
    return (p.t(f"{n} gets {a} {obj} on Monday and {b} {obj} on Tuesday. {he} shares all of them "
                f"equally among {k} friends. How many {obj} does each friend get?",
                f"{n}星期一得到{a}{mw}{obj}，星期二又得到{b}{mw}。{he}把这些{obj}平均分给{k}个朋友，"
                f"每个朋友分到多少{mw}？"),
            p.t(f"So each friend gets {fmt(x)} {obj}.", f"答：每个朋友分到{fmt(x)}{mw}{obj}。"), p.t(obj, mw))


def _change(p: _Problem):
    (n, he), = p.names(1)
    (one, many, mw), = p.goods(1)
    k, price = p.r.randint(2, 9), _price(p.r)
    m = _paid(k * price)
    s = p.step(f"find the cost of the {many}", f"买{one}一共花了多少元", k, "×", price, "元")
    x = p.step(f"subtract it from the {m} yuan", "还剩多少元", m, "-", s, "元")
    return (p.t(f"{n} has {m} yuan. {he} buys {k} {many} at {fmt(price)} yuan each. "
                f"How much money does {n} have left?",
                f"{n}带了{m}元钱，买了{k}{mw}{one}，每{mw}{fmt(price)}元。{n}还剩多少元？"),
            p.t(f"So {n} has {fmt(x)} yuan left.", f"答：{n}还剩{fmt(x)}元。"), p.t("yuan", "元"))


def _two_items(p: _Problem):
    (n, _), = p.names(1)
    (o1, m1, w1), (o2, m2, w2) = p.goods(2)
    k1, k2, p1, p2 = p.r.randint(2, 8), p.r.randint(2, 8), _price(p.r), _price(p.r)
    s1 = p.step(f"find the cost of the {m1}", f"买{o1}要多少元", k1, "×", p1, "元")
    s2 = p.step(f"find the cost of the {m2}", f"买{o2}要多少元", k2, "×", p2, "元")
    x = p.step("add the two costs", "一共要付多少元", s1, "+", s2, "元")
    return (p.t(f"At a shop, a {o1} costs {fmt(p1)} yuan and a {o2} costs {fmt(p2)} yuan. "
                f"{n} buys {k1} {m1} and {k2} {m2}. How much does {n} pay in total?",
                f"商店里一{w1}{o1}{fmt(p1)}元，一{w2}{o2}{fmt(p2)}元。{n}买了{k1}{w1}{o1}和{k2}{w2}{o2}，"
                f"一共要付多少元？"),
            p.t(f"So {n} pays {fmt(x)} yuan in total.", f"答：{n}一共要付{fmt(x)}元。"), p.t("yuan", "元"))


def _bag(p: _Problem):
    (n, he), = p.names(1)
    (one, many, mw), = p.goods(1)
    k, price, bag = p.r.randint(2, 9), _price(p.r), _price(p.r, 5, 30)
    m = _paid(k * price + bag)
    s = p.step(f"find the cost of the {many}", f"买{one}花了多少元", k, "×", price, "元")
    s = p.step("add the bag", "加上袋子一共花了多少元", s, "+", bag, "元")
    x = p.step(f"subtract the total from {m} yuan", "应找回多少元", m, "-", s, "元")
    return (p.t(f"{n} buys {k} {many} at {fmt(price)} yuan each and a bag for {fmt(bag)} yuan. "
                f"{he} pays {m} yuan. How much change does {n} get?",
                f"{n}买了{k}{mw}{one}，每{mw}{fmt(price)}元，又花{fmt(bag)}元买了一个袋子。{he}付了{m}元，"
                f"应找回多少元？"),
            p.t(f"So {n} gets {fmt(x)} yuan in change.", f"答：应找回{fmt(x)}元。"), p.t("yuan", "元"))


def _road(p: _Problem):
    a, d = p.r.randint(4, 30) * 5, p.r.randint(2, 9)
    total = a * d + p.r.randint(2, 80) * 5
    s = p.step(f"find how much is repaired in {d} days", f"{d}天一共修了多少米", a, "×", d, "米")
    x = p.step("subtract it from the length of the road", "还剩多少米没有修", total, "-", s, "米")
    return (p.t(f"A road is {total} metres long. A team repairs {a} metres of it each day. "
                f"After {d} days, how many metres of the road are still not repaired?",
                f"一条路长{total}米，工程队每天修{a}米。修了{d}天后，还剩多少米没有修？"),
            p.t(f"So {fmt(x)} metres are still not repaired.", f"答：还剩{fmt(x)}米没有修。"), p.t("metres", "米"))


def _rope(p: _Problem):
    (n, he), = p.names(1)
    k, piece, used = p.r.randint(2, 8), p.r.randint(2, 15), p.r.randint(2, 20)
    length = k * piece + used + p.r.randint(1, 40)
    s = p.step(f"find the length of the {k} pieces", f"剪下的{k}段一共长多少米", k, "×", piece, "米")
    s = p.step("subtract the pieces from the rope", "剪下以后还剩多少米", length, "-", s, "米")
    x = p.step(f"subtract the {used} metres used for the box", f"再减去用去的{used}米", s, "-", used, "米")
    return (p.t(f"{n} has a rope {length} metres long. {he} cuts off {k} pieces, each {piece} metres long, "
                f"and then uses another {used} metres to tie a box. How many metres of rope are left?",
                f"{n}有一根长{length}米的绳子，{he}剪下{k}段，每段{piece}米，又用去{used}米捆箱子。"
                f"这根绳子还剩多少米？"),
            p.t(f"So {fmt(x)} metres of rope are left.", f"答：这根绳子还剩{fmt(x)}米。"), p.t("metres", "米"))


def _shelves(p: _Problem):
    s, q, b = p.r.randint(2, 8), p.r.randint(5, 30), p.r.randint(2, 15)
    total = s * q
    each = p.step("find how many books were on each shelf", "原来每层放多少本", total, "÷", s, "本")
    each = p.step("add the new books on each shelf", "现在每层放多少本", each, "+", b, "本")
    x = p.step(f"multiply by the {s} shelves", "现在一共有多少本", each, "×", s, "本")
    return (p.t(f"A class library puts {total} books equally on {s} shelves. Then {b} more books are added "
                f"to each shelf. How many books are on the shelves now?",
                f"图书角有{total}本书，平均放在{s}层书架上。后来每层又放了{b}本，现在书架上一共有多少本书？"),
            p.t(f"So there are {fmt(x)} books on the shelves now.", f"答：现在书架上一共有{fmt(x)}本书。"),
            p.t("books", "本"))


def _compare(p: _Problem):
    (a_, _), (b_, _), (c_, _) = p.names(3)
    obj, mw = p.thing()
    a, k = p.r.randint(3, 40), p.r.randint(2, 5)
    d = p.r.randint(1, a * k - 1)
    nb = p.step(f"find how many {obj} {b_} has", f"{b_}有多少{mw}", a, "×", k, mw)
    nc = p.step(f"find how many {obj} {c_} has", f"{c_}有多少{mw}", nb, "-", d, mw)
    x = p.step("add them together", "两人一共有多少" + mw, nb, "+", nc, mw)
    return (p.t(f"{a_} has {a} {obj}. {b_} has {k} times as many {obj} as {a_}, and {c_} has {d} fewer "
                f"{obj} than {b_}. How many {obj} do {b_} and {c_} have together?",
                f"{a_}有{a}{mw}{obj}，{b_}的{obj}是{a_}的{k}倍，{c_}比{b_}少{d}{mw}。"
                f"{b_}和{c_}一共有多少{mw}{obj}？"),
            p.t(f"So {b_} and {c_} have {fmt(x)} {obj} together.", f"答：{b_}和{c_}一共有{fmt(x)}{mw}{obj}。"),
            p.t(obj, mw))


def _savings(p: _Problem):
    (n, he), = p.names(1)
    s, w, k = p.r.randint(5, 30), p.r.randint(2, 10), p.r.randint(2, 5)
    rest = k * p.r.randint(1, (s * w - 1) // k)
    total = p.step(f"find how much {n} saved", "一共存了多少元", s, "×", w, "元")
    left = p.step("subtract the cost of the gift", "买礼物后还剩多少元", total, "-", s * w - rest, "元")
    x = p.step(f"divide the rest into {k} envelopes", "每个信封里装多少元", left, "÷", k, "元")
    return (p.t(f"{n} saves {s} yuan every week for {w} weeks. {he} spends {s * w - rest} yuan on a gift and "
                f"puts the rest equally into {k} envelopes. How much money is in each envelope?",
                f"{n}每周存{s}元，存了{w}周。{he}用{s * w - rest}元买了一件礼物，把剩下的钱平均装进{k}个信封。"
                f"每个信封里装多少元？"),
            p.t(f"So each envelope holds {fmt(x)} yuan.", f"答：每个信封里装{fmt(x)}元。"), p.t("yuan", "元"))


def _groups(p: _Problem):
    obj, mw = p.thing()
    k, g, m = p.r.randint(2, 6), p.r.randint(3, 10), p.r.randint(2, 9)
    boys = p.r.randint(1, k * g - 1)
    girls = k * g - boys
    pupils = p.step("find the number of pupils", "全班一共有多少人", boys, "+", girls, "人")
    groups = p.step(f"find the number of groups of {k}", "可以分成多少组", pupils, "÷", k, "组")
    x = p.step(f"give {m} {obj} to each group", f"一共要发多少{mw}", groups, "×", m, mw)
    return (p.t(f"A class has {boys} boys and {girls} girls. They work in groups of {k}, and the teacher gives "
                f"each group {m} {obj}. How many {obj} does the teacher give out?",
                f"一个班有男生{boys}人，女生{girls}人。他们每{k}人一组，老师给每组发{m}{mw}{obj}。"
                f"老师一共要发多少{mw}{obj}？"),
            p.t(f"So the teacher gives out {fmt(x)} {obj}.", f"答：老师一共要发{fmt(x)}{mw}{obj}。"), p.t(obj, mw))


def _bakery(p: _Problem):
    k, boxes, sold = p.r.randint(2, 12), p.r.randint(2, 15), p.r.randint(3, 60)
    made = k * boxes + sold
    s = p.step("find how many buns are left", "还剩多少个面包", made, "-", sold, "个")
    x = p.step(f"pack them into boxes of {k}", "可以装多少盒", s, "÷", k, "盒")
    return (p.t(f"A baker makes {made} buns and sells {sold} of them in the morning. The rest are packed "
                f"into boxes of {k}. How many boxes are needed?",
                f"面包店做了{made}个面包，上午卖出{sold}个，剩下的每{k}个装一盒。需要多少个盒子？"),
            p.t(f"So {fmt(x)} boxes are needed.", f"答：需要{fmt(x)}个盒子。"), p.t("boxes", "盒"))


def _unit_price(p: _Problem):
    (one, many, mw), = p.goods(1)
    k, m, price = p.r.randint(2, 9), p.r.randint(2, 12), _price(p.r)
    each = p.step(f"find the price of one {one}", f"一{mw}{one}多少元", k * price, "÷", k, "元")
    x = p.step(f"multiply by {m}", f"买{m}{mw}要多少元", each, "×", m, "元")
    return (p.t(f"{k} {many} cost {fmt(k * price)} yuan. At the same price, how much do {m} {many} cost?",
                f"{k}{mw}{one}一共{fmt(k * price)}元。照这样计算，买{m}{mw}{one}要多少元？"),
            p.t(f"So {m} {many} cost {fmt(x)} yuan.", f"答：买{m}{mw}{one}要{fmt(x)}元。"), p.t("yuan", "元"))


_TEMPLATES = (_give_away, _boxes, _share, _change, _two_items, _bag, _road, _rope,
              _shelves, _compare, _savings, _groups, _bakery, _unit_price)


def generate(n: int, lang: str = "en", seed: int = 0) -> list[dict]:
    """n problems; lang in {"en", "zh", "mix"} ("mix" alternates zh/en deterministically)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {', '.join(LANGS)}; got {lang!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    r, out = random.Random(seed), []
    for i in range(n):
        p = _Problem(r, ("zh", "en")[i % 2] if lang == "mix" else lang)
        question, final, unit = _TEMPLATES[r.randrange(len(_TEMPLATES))](p)
        answer = fmt(p.steps[-1][4])
        # The id carries the requested lang ("mix" included) so ids never collide across calls.
        out.append({"question": question, "solution": p.solution(final, answer), "answer": answer,
                    "unit": unit, "steps": len(p.steps), "lang": p.lang, "id": f"arith-{lang}-{seed}-{i}"})
    return out
