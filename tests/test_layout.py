"""The import direction the README states, checked on every module (imports inside functions too):

    leaves (errors, config, paths, rundir, memory, env)  <-  data  <-  models  <-  tokenizer, rag, estimate
        <-  train, evaluate, serve (siblings: none imports another)  <-  experiment  <-  ui  <-  cli
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"
LEAVES = {"errors", "config", "paths", "rundir", "memory", "env", "__init__"}
BELOW = {
    "leaf": set(),
    "data": {"leaf"},
    "models": {"leaf", "data"},
    "tokenizer": {"leaf", "data", "models"},
    "rag": {"leaf", "data", "models"},
    "estimate": {"leaf", "data", "models"},
    "train": {"leaf", "data", "models", "estimate"},
    "evaluate": {"leaf", "data", "models", "rag"},
    "serve": {"leaf", "data", "models", "rag"},
    "experiment": {"leaf", "data", "models", "rag", "estimate", "train", "evaluate", "serve"},
    "ui": {"leaf", "data", "models", "rag", "estimate", "train", "evaluate", "serve", "experiment"},
}


def group(module: str) -> str:
    """tunelab.a.b -> the layer it belongs to."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return "leaf" if top in LEAVES else top


def _is_module(name: str) -> bool:
    path = SRC.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def imports(path: Path) -> set[str]:
    """The tunelab modules `path` imports, relative imports resolved."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tunelab")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                names = [name] if node.module else [f"{name}.{a.name}" for a in node.names]
                found |= {n if _is_module(n) else n.rsplit(".", 1)[0] for n in names}
            elif node.module and node.module.startswith("tunelab"):
                found.add(node.module)
    return found


def test_imports_point_one_way():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        mod = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        here = group(mod)
        if here in ("cli", "__main__"):
            continue
        assert here in BELOW, f"{path}: layer '{here}' is not in the stated direction; add it to BELOW and the README"
        for target in imports(path):
            there = group(target)
            if there != here and there not in BELOW[here]:
                wrong.append(f"{mod} ({here}) imports {target} ({there})")
    assert not wrong, "imports against the stated direction:\n" + "\n".join(wrong)


def test_the_readme_states_the_direction():
    readme = (SRC.parents[1] / "README.md").read_text(encoding="utf-8")
    assert "Dependencies point one way" in readme and "tests/test_layout.py" in readme
