"""Multiple-choice benchmarks in their published layouts, and the prompts their papers use.

    items = read_benchmark("mmlu", "path/to/mmlu/data", split="test")   # [ChoiceItem, ...]
    shots = read_benchmark("mmlu", "path/to/mmlu/data", split="dev")

Layouts read (a local folder; `hub:` reads the same data from the Hugging Face hub when online):
- MMLU (Hendrycks et al.; the `data.tar` release): `{dev,val,test}/<subject>_{dev,val,test}.csv`,
  no header row, columns question, A, B, C, D, answer (a letter).
- C-Eval (`ceval-exam.zip`): `{dev,val,test}/<subject>_{dev,val,test}.csv` with a header row
  `id,question,A,B,C,D,answer,explanation` (dev has explanations; val has answers; the test
  split's answers are not public, so scoring it is refused).
- CMMLU (`cmmlu_v1_0_1.zip` / the repository's `data/`): `{dev,test}/<subject>.csv` with a header
  row `,Question,A,B,C,D,Answer` (the first column is the row number).
A folder may hold the split folders directly or under `data/`. Subject names, their Chinese names
and their categories come from each benchmark's own mapping (MMLU: lm-eval's 4 categories; C-Eval:
`subject_mapping.json`; CMMLU: `categories.py`), embedded below; an unknown subject is "other".

Prompts (exactly; `{subject}` is the subject's display name):
- MMLU:  "The following are multiple choice questions (with answers) about {subject}.\\n\\n" then per
  example "{question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:" and, for a shot, " {letter}\\n\\n".
  This is lm-eval's `mmlu` (the paper's format with single spaces); the scored continuation is " A".
- C-Eval: "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\\n\\n", examples end in
  "\\n答案：" and a shot's answer follows with no space ("答案：A"), as in the C-Eval repository.
- CMMLU: "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\\n\\n", examples "题目：{question}
  \\nA. ...\\n答案是：" and "答案是：A", as in the CMMLU repository.
(lm-eval's `ceval-valid` / `cmmlu` tasks differ slightly: no "考试"/"题目：", and a space before the
letter. `target_delimiter` and the templates are fields, so either can be used.)
"""
from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

LETTERS = "ABCD"


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    question: str
    options: tuple[str, ...]  # option texts, for letters A, B, C, ...
    gold: int  # index of the correct option
    subject: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChoiceFormat:
    header: str  # once per prompt, before the shots; "" for none
    example: str  # one question with its options, up to where the answer goes
    target_delimiter: str  # between the example and the answer letter
    fewshot_delimiter: str = "\n\n"
    language: str = "en"

    def render(self, item: ChoiceItem) -> str:
        opts = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options))
        return self.example.format(question=item.question.strip(), options=opts)

    def choices(self, item: ChoiceItem) -> list[str]:
        return list(LETTERS[: len(item.options)])


FORMATS: dict[str, ChoiceFormat] = {
    "mmlu": ChoiceFormat("The following are multiple choice questions (with answers) about {subject}.\n\n",
                         "{question}\n{options}\nAnswer:", " "),
    "ceval": ChoiceFormat("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
                          "{question}\n{options}\n答案：", "", language="zh"),
    "cmmlu": ChoiceFormat("以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n",
                          "题目：{question}\n{options}\n答案是：", "", language="zh"),
}


def context(fmt: ChoiceFormat, subject_name: str, shots: list[ChoiceItem], item: ChoiceItem) -> str:
    """The plain-text prompt (lm-eval's layout): header, shots each followed by its answer and the
    few-shot delimiter, then the question up to where the answer goes."""
    text = fmt.header.format(subject=subject_name)
    for s in shots:
        text += fmt.render(s) + fmt.target_delimiter + fmt.choices(s)[s.gold] + fmt.fewshot_delimiter
    return text + fmt.render(item)


def chat_messages(fmt: ChoiceFormat, subject_name: str, shots: list[ChoiceItem], item: ChoiceItem,
                  multiturn: bool) -> list[dict[str, str]]:
    """The prompt as chat messages (lm-eval's `--apply_chat_template`): the header as the system
    message; shots as user/assistant turns (`multiturn`) or, like lm-eval by default, folded with the
    question into one user message."""
    header = fmt.header.format(subject=subject_name).strip()
    msgs = [{"role": "system", "content": header}] if header else []
    if multiturn:
        for s in shots:
            msgs += [{"role": "user", "content": fmt.render(s)}, {"role": "assistant", "content": fmt.choices(s)[s.gold]}]
        return msgs + [{"role": "user", "content": fmt.render(item)}]
    text = "".join(fmt.render(s) + fmt.target_delimiter + fmt.choices(s)[s.gold] + fmt.fewshot_delimiter for s in shots)
    return msgs + [{"role": "user", "content": text + fmt.render(item)}]


# ---------------------------------------------------------------- subjects and categories

# MMLU: subject -> lm-eval's category (stem, humanities, social_sciences, other)
_MMLU = """stem: abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science
college_mathematics college_physics computer_security conceptual_physics electrical_engineering elementary_mathematics
high_school_biology high_school_chemistry high_school_computer_science high_school_mathematics high_school_physics
high_school_statistics machine_learning
humanities: formal_logic high_school_european_history high_school_us_history high_school_world_history
international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy prehistory
professional_law world_religions
social_sciences: econometrics high_school_geography high_school_government_and_politics
high_school_macroeconomics high_school_microeconomics high_school_psychology human_sexuality
professional_psychology public_relations security_studies sociology us_foreign_policy
other: business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing
medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology"""

# C-Eval subject_mapping.json: subject -> (Chinese name, category)
_CEVAL = """computer_network 计算机网络 STEM|operating_system 操作系统 STEM|computer_architecture 计算机组成 STEM
college_programming 大学编程 STEM|college_physics 大学物理 STEM|college_chemistry 大学化学 STEM
advanced_mathematics 高等数学 STEM|probability_and_statistics 概率统计 STEM|discrete_mathematics 离散数学 STEM
electrical_engineer 注册电气工程师 STEM|metrology_engineer 注册计量师 STEM|high_school_mathematics 高中数学 STEM
high_school_physics 高中物理 STEM|high_school_chemistry 高中化学 STEM|high_school_biology 高中生物 STEM
middle_school_mathematics 初中数学 STEM|middle_school_biology 初中生物 STEM|middle_school_physics 初中物理 STEM
middle_school_chemistry 初中化学 STEM|veterinary_medicine 兽医学 STEM|college_economics 大学经济学 Social_Science
business_administration 工商管理 Social_Science|marxism 马克思主义基本原理 Social_Science
mao_zedong_thought 毛泽东思想和中国特色社会主义理论体系概论 Social_Science|education_science 教育学 Social_Science
teacher_qualification 教师资格 Social_Science|high_school_politics 高中政治 Social_Science
high_school_geography 高中地理 Social_Science|middle_school_politics 初中政治 Social_Science
middle_school_geography 初中地理 Social_Science|modern_chinese_history 近代史纲要 Humanities
ideological_and_moral_cultivation 思想道德修养与法律基础 Humanities|logic 逻辑学 Humanities|law 法学 Humanities
chinese_language_and_literature 中国语言文学 Humanities|art_studies 艺术学 Humanities
professional_tour_guide 导游资格 Humanities|legal_professional 法律职业资格 Humanities
high_school_chinese 高中语文 Humanities|high_school_history 高中历史 Humanities|middle_school_history 初中历史 Humanities
civil_servant 公务员 Other|sports_science 体育学 Other|plant_protection 植物保护 Other|basic_medicine 基础医学 Other
clinical_medicine 临床医学 Other|urban_and_rural_planner 注册城乡规划师 Other|accountant 注册会计师 Other
fire_engineer 注册消防工程师 Other|environmental_impact_assessment_engineer 环境影响评价工程师 Other
tax_accountant 税务师 Other|physician 医师资格 Other"""

# CMMLU categories.py: subject -> (Chinese name, category; "China specific" subjects keep their field)
_CMMLU = """agronomy 农学 Other|anatomy 解剖学 STEM|ancient_chinese 古汉语 Social_Science|arts 艺术学 Humanities
astronomy 天文学 STEM|business_ethics 商业伦理 Social_Science|chinese_civil_service_exam 中国公务员考试 Social_Science
chinese_driving_rule 中国驾驶规则 Other|chinese_food_culture 中国饮食文化 Social_Science
chinese_foreign_policy 中国外交政策 Social_Science|chinese_history 中国历史 Humanities
chinese_literature 中国文学 Humanities|chinese_teacher_qualification 中国教师资格 Social_Science
clinical_knowledge 临床知识 Other|college_actuarial_science 大学精算学 STEM|college_education 大学教育学 Social_Science
college_engineering_hydrology 大学工程水文学 STEM|college_law 大学法律 Humanities|college_mathematics 大学数学 STEM
college_medical_statistics 大学医学统计 STEM|college_medicine 大学医学 Other|computer_science 计算机科学 STEM
computer_security 计算机安全 Other|conceptual_physics 概念物理学 STEM|construction_project_management 建设工程管理 Other
economics 经济学 Social_Science|education 教育学 Social_Science|electrical_engineering 电气工程 STEM
elementary_chinese 小学语文 Social_Science|elementary_commonsense 小学常识 Other
elementary_information_and_technology 小学信息技术 Other|elementary_mathematics 初等数学 STEM|ethnology 民族学 Social_Science
food_science 食品科学 Other|genetics 遗传学 STEM|global_facts 全球事实 Humanities|high_school_biology 高中生物 STEM
high_school_chemistry 高中化学 STEM|high_school_geography 高中地理 Social_Science|high_school_mathematics 高中数学 STEM
high_school_physics 高中物理学 STEM|high_school_politics 高中政治 Social_Science|human_sexuality 人类性行为 Other
international_law 国际法学 Humanities|journalism 新闻学 Social_Science|jurisprudence 法理学 Humanities
legal_and_moral_basis 法律与道德基础 Other|logical 逻辑学 Humanities|machine_learning 机器学习 STEM
management 管理学 Social_Science|marketing 市场营销 Social_Science|marxist_theory 马克思主义理论 Humanities
modern_chinese 现代汉语 Social_Science|nutrition 营养学 Other|philosophy 哲学 Humanities
professional_accounting 专业会计 Social_Science|professional_law 专业法学 Humanities|professional_medicine 专业医学 Other
professional_psychology 专业心理学 Social_Science|public_relations 公共关系 Social_Science|security_study 安全研究 Social_Science
sociology 社会学 Social_Science|sports_science 体育学 Other|traditional_chinese_medicine 中医中药 Other
virology 病毒学 STEM|world_history 世界历史 Humanities|world_religions 世界宗教 Humanities"""


def _table(spec: str) -> dict[str, tuple[str, str]]:
    out = {}
    for entry in re.split(r"[|\n]", spec):
        key, name, cat = entry.split()
        out[key] = (name, cat.replace("_", " "))
    return out


def _categories(spec: str) -> dict[str, str]:
    out, cat = {}, ""
    for line in spec.split("\n"):  # "category: subjects ..." then continuation lines of subjects
        if ":" in line:
            cat, line = line.split(":", 1)
        out.update({s: cat for s in line.split()})
    return out


MMLU_CATEGORIES = _categories(_MMLU)
CEVAL_SUBJECTS = _table(_CEVAL)
CMMLU_SUBJECTS = _table(_CMMLU)


def subject_info(benchmark: str, subject: str) -> tuple[str, str]:
    """(display name used in the prompt, category) of a subject."""
    if benchmark == "mmlu":
        return subject.replace("_", " "), MMLU_CATEGORIES.get(subject, "other")
    table = CEVAL_SUBJECTS if benchmark == "ceval" else CMMLU_SUBJECTS
    return table.get(subject, (subject.replace("_", " "), "Other"))


# ---------------------------------------------------------------- readers

SPLITS = {"mmlu": ("dev", "val", "test"), "ceval": ("dev", "val", "test"), "cmmlu": ("dev", "test")}
HUB = {"mmlu": "cais/mmlu", "ceval": "ceval/ceval-exam", "cmmlu": "haonan-li/cmmlu"}


def _root(folder: Path, split: str) -> Path:
    for base in (folder, folder / "data"):
        if (base / split).is_dir():
            return base / split
    raise DataError(f"{folder}: no '{split}' folder (looked in {folder / split} and {folder / 'data' / split}); "
                    "expected the benchmark's published layout (dev/, val/ or test/ folders of CSV files)")


def _rows(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [r for r in csv.reader(f) if r]
    except UnicodeDecodeError:
        from ..data.sources import not_utf8

        raise not_utf8(path) from None


def _answer(letter: str, where: str, n_options: int = 4) -> int:
    letter = letter.strip().upper()
    if len(letter) != 1 or letter not in LETTERS[:n_options]:
        raise DataError(f"{where}: answer {letter!r} is not one of {', '.join(LETTERS[:n_options])}")
    return LETTERS.index(letter)


def _read_file(benchmark: str, path: Path, subject: str, split: str) -> list[ChoiceItem]:
    rows = _rows(path)
    items = []
    if benchmark == "mmlu":  # no header: question, A, B, C, D, answer
        for i, r in enumerate(rows, 1):
            if len(r) != 6:
                raise DataError(f"{path}:{i}: MMLU rows have 6 columns (question, A, B, C, D, answer), got {len(r)}")
            items.append(ChoiceItem(f"{subject}/{split}/{i - 1}", r[0], tuple(r[1:5]),
                                    _answer(r[5], f"{path}:{i}"), subject))
        return items
    header = [h.strip() for h in rows[0]] if rows else []
    need = ["question", "A", "B", "C", "D"] if benchmark == "ceval" else ["Question", "A", "B", "C", "D"]
    missing = [c for c in need if c not in header]
    if missing:
        expected = "id,question,A,B,C,D,answer,explanation" if benchmark == "ceval" else ",Question,A,B,C,D,Answer"
        raise DataError(f"{path}: header {','.join(header)!r} lacks {missing}; the published layout is {expected}")
    col = {h: k for k, h in enumerate(header)}
    answer_col = "answer" if benchmark == "ceval" else "Answer"
    for i, r in enumerate(rows[1:], 2):
        r = r + [""] * (len(header) - len(r))
        answer = r[col[answer_col]] if answer_col in col else ""
        if not answer.strip():
            raise DataError(f"{path}:{i}: no answer; {benchmark} {split} answers are not public, score the "
                            f"{'val' if benchmark == 'ceval' else 'test'} split (--split)")
        rid = r[col["id"]] if benchmark == "ceval" else r[0]
        meta = {"explanation": r[col["explanation"]]} if "explanation" in col and r[col["explanation"]] else {}
        items.append(ChoiceItem(f"{subject}/{split}/{rid}", r[col[need[0]]], tuple(r[col[c]] for c in "ABCD"),
                                _answer(answer, f"{path}:{i}"), subject, meta))
    return items


def _read_hub(benchmark: str, subject_list: list[str] | None, split: str) -> dict[str, list[ChoiceItem]]:
    """The same data from the hub (needs network; not exercised offline)."""
    from datasets import get_dataset_config_names, load_dataset

    repo = HUB[benchmark]
    names = subject_list or [n for n in get_dataset_config_names(repo) if n != "all"]
    out = {}
    for s in names:
        hub_split = {"val": "validation"}.get(split, split) if benchmark == "mmlu" else split
        ds = load_dataset(repo, s, split=hub_split)
        items = []
        for i, r in enumerate(ds):
            if benchmark == "mmlu":
                items.append(ChoiceItem(f"{s}/{split}/{i}", r["question"], tuple(r["choices"]), int(r["answer"]), s))
            else:
                q = r["question"] if benchmark == "ceval" else r["Question"]
                a = r["answer"] if benchmark == "ceval" else r["Answer"]
                items.append(ChoiceItem(f"{s}/{split}/{r.get('id', i)}", q, tuple(r[c] for c in "ABCD"),
                                        _answer(a, f"{repo}/{s}/{split}:{i}"), s))
        out[s] = items
    return out


def read_benchmark(benchmark: str, source: str, split: str,
                   subjects: list[str] | None = None) -> dict[str, list[ChoiceItem]]:
    """{subject: items} of one split, subjects in name order. `source` is the folder, or `hub`."""
    if benchmark not in SPLITS:
        raise DataError(f"unknown benchmark '{benchmark}'; known: {', '.join(SPLITS)}")
    if split not in SPLITS[benchmark]:
        raise DataError(f"{benchmark} has splits {', '.join(SPLITS[benchmark])}, not '{split}'")
    if source == "hub":
        return _read_hub(benchmark, subjects, split)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise DataError(f"{benchmark}: {folder} is not a folder; give --data FOLDER holding the benchmark in its "
                        f"published layout (dev/ {'val/ ' if 'val' in SPLITS[benchmark] else ''}test/), or --data hub")
    root = _root(folder, split)
    suffix = "" if benchmark == "cmmlu" else f"_{split}"
    files = {p.name[: len(p.name) - len(suffix) - 4]: p for p in sorted(root.glob(f"*{suffix}.csv"))}
    if subjects:
        unknown = [s for s in subjects if s not in files]
        if unknown:
            raise DataError(f"{root}: no file for subject(s) {unknown}; found: {', '.join(files) or 'none'}")
        files = {s: files[s] for s in subjects}
    if not files:
        raise DataError(f"{root}: no *{suffix}.csv files")
    return {s: _read_file(benchmark, p, s, split) for s, p in files.items()}


# ---------------------------------------------------------------- cn_middle_school

_OPTION_A = re.compile(r"(?:^|(?<=\s))A[.．、]")
_OPTIONS_REST = re.compile(r"A[.．、]\s*(.*?)\s+B[.．、]\s*(.*?)\s+C[.．、]\s*(.*?)\s+D[.．、]\s*(.*?)\s*", re.S)


def split_options(text: str) -> tuple[str, tuple[str, ...]] | None:
    """"下列...是()\\nA.-2  B.0  C. 3  D.  -1/2" (or the options on the question's line) ->
    ("下列...是()", ("-2", "0", "3", "-1/2")); None when the text does not end in options A-D."""
    for a in reversed(list(_OPTION_A.finditer(text))):  # the last "A." that starts a full A-D list
        m = _OPTIONS_REST.fullmatch(text, a.start())
        if m:
            return text[: a.start()].strip(), tuple(o.strip() for o in m.groups())
    return None


def read_cn_middle_school(source: str) -> list[ChoiceItem]:
    """The multiple-choice rows of Qwen2.5-Math's cn_middle_school (options inside the question text,
    `choice_answer` the letter); fill-in rows (no options, empty `choice_answer`) are left out."""
    from ..data.sources import iter_records

    items = []
    for where, r in iter_records(source):
        letter = str(r.get("choice_answer") or "").strip()
        parsed = split_options(str(r.get("question", "")))
        if not letter or parsed is None:
            continue
        stem, options = parsed
        items.append(ChoiceItem(str(r.get("idx", len(items))), stem, options, _answer(letter, where),
                                "middle_school_mathematics", {"answer": str(r.get("answer", ""))}))
    if not items:
        raise DataError(f"{source}: no multiple-choice rows (a question with A./B./C./D. options and a choice_answer)")
    return items


def holdout(items: list[ChoiceItem], n: int, seed: int) -> tuple[list[ChoiceItem], list[ChoiceItem]]:
    """(shots, rest): `n` items drawn with `seed` to serve as the few-shot pool, never scored."""
    if n >= len(items):
        raise DataError(f"cannot hold out {n} few-shot examples from {len(items)} items")
    picked = set(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in sorted(picked)], [it for i, it in enumerate(items) if i not in picked]
