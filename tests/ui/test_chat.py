"""The board's chat: conversations from the page are checked, and models load one at a time, so two
columns of a side-by-side chat can ask for two new models at once.

    .venv/bin/python -m pytest tests/ui/test_chat.py -q
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_conversations_are_checked():
    from tunelab.errors import ServeError
    from tunelab.ui.chat import check_messages

    ok = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert check_messages(ok) == ok
    for bad in ([], [{"role": "assistant", "content": "b"}], ok[:2], [{"role": "user"}],
                [{"role": "system", "content": "x"}, {"role": "user", "content": "a"}], "hi"):
        with pytest.raises(ServeError):
            check_messages(bad)


def test_two_new_models_at_once(tunelab_home):
    """In a fresh process (transformers' lazy imports are at stake), two threads load two models at once."""
    code = """
import threading
from tunelab.models.builtin import ensure
from tunelab.ui.chat import ModelPool
pool, out = ModelPool(), {}
refs = ["tiny-qwen3", str(ensure("tiny-qwen3"))]
def load(ref):
    try:
        out[ref] = type(pool.get(ref)[0].model).__name__
    except Exception as e:
        out[ref] = repr(e)
threads = [threading.Thread(target=load, args=(r,)) for r in refs]
[t.start() for t in threads]; [t.join() for t in threads]
pool.close()
print(sorted(out.values()))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    assert done.stdout.strip().splitlines()[-1] == "['Qwen3ForCausalLM', 'Qwen3ForCausalLM']", done.stderr[-2000:]
