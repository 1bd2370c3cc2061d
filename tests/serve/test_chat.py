"""`tunelab chat` with piped input, as a real process: replies equal `tunelab eval`'s for the whole
conversation so far, the commands (/system, /save, /reset, //, unknown, /exit), and bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.serve.conftest import env
from tunelab.models.generate import GenerationSettings, Generator
from tunelab.models.generation import stop_token_ids
from tunelab.models.loaded import Loaded


def chat(*args: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab", "chat", *args], input=stdin, capture_output=True,
                          text=True, env=env(), cwd=REPO, timeout=180)


@pytest.fixture(scope="module")
def evaluated(random_qwen):
    loaded = Loaded(random_qwen)
    gen = Generator(loaded.model, loaded.tokenizer, stop_token_ids(loaded.tokenizer, loaded.renderer.eot))

    def answer(messages, **settings):
        prompt = loaded.renderer.render_prompt(messages)
        return gen.generate([prompt], GenerationSettings(batch_size=1, **settings), progress=False)[(0, 0)][0]

    return answer


def test_piped_multi_turn_chat_with_commands(random_qwen, evaluated, tmp_path):
    saved = tmp_path / "sub" / "chat.json"
    script = ["hi", "/system Be brief.", "What is 2+3?", f"/save {saved}", "/rest", "/reset", "", "//hi",
              "/exit", "never sent"]
    r = chat(random_qwen, "--max-new-tokens", "6", stdin="\n".join(script) + "\n")
    assert r.returncode == 0, r.stderr[-2000:]
    # the expected replies, from eval's Generator, each on the whole conversation so far
    sys_msg = {"role": "system", "content": "Be brief."}
    one = evaluated([{"role": "user", "content": "hi"}], max_new_tokens=6)
    conv = [sys_msg, {"role": "user", "content": "hi"}, {"role": "assistant", "content": one},
            {"role": "user", "content": "What is 2+3?"}]
    two = evaluated(conv, max_new_tokens=6)
    three = evaluated([sys_msg, {"role": "user", "content": "/hi"}], max_new_tokens=6)  # after /reset
    assert one and two and three and len({one, two, three}) == 3
    assert r.stdout == f"{one}\n{two}\n{three}\n"  # replies only, one per turn
    assert json.loads(saved.read_text()) == {"messages": conv + [{"role": "assistant", "content": two}]}
    assert "unknown command '/rest'" in r.stderr and "conversation reset (system prompt kept)" in r.stderr
    assert f"saved 5 messages to {saved}" in r.stderr


def test_system_option_and_sampling_flags(random_qwen, evaluated):
    r = chat(random_qwen, "--system", "You are terse.", "--max-new-tokens", "5", "--temperature", "1.0",
             "--seed", "7", stdin="hi\n")
    expected = evaluated([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}],
                         max_new_tokens=5, temperature=1.0, seed=7)
    assert r.returncode == 0 and r.stdout == expected + "\n"


def test_bad_input_exits_2(random_qwen):
    r = chat("no-such-model", stdin="hi\n")
    assert r.returncode == 2 and "model 'no-such-model' not found" in r.stderr and r.stdout == ""
    r = chat(random_qwen, "--max-new-tokens", "0", stdin="hi\n")
    assert r.returncode == 2 and "--max-new-tokens must be at least 1" in r.stderr
    for seed in (str(2**70), str(-(2**63) - 1)):  # torch would raise an OverflowError mid-chat
        r = chat(random_qwen, "--temperature", "1", "--seed", seed, stdin="hi\n")
        assert r.returncode == 2 and f"--seed must be an integer from {-(2**63)} to {2**63 - 1}" in r.stderr


def test_piped_input_that_is_not_utf8_stops_with_one_message(random_qwen, evaluated):
    # the first line is answered; the second (Latin-1 "été") stops the chat: line, byte, no traceback
    r = subprocess.run([sys.executable, "-m", "tunelab", "chat", random_qwen, "--max-new-tokens", "4"],
                       input=b"\xef\xbb\xbfhi\n\xe9t\xe9\nnever sent\n", capture_output=True, env=env(), cwd=REPO,
                       timeout=180)
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err, err[-2000:]
    assert "stdin line 2, byte 1: 0xe9 is not UTF-8 (offset 6 of the input)" in err
    assert r.stdout.decode() == evaluated([{"role": "user", "content": "hi"}], max_new_tokens=4) + "\n"


def test_utf8_lines():
    import io

    from tunelab.errors import ServeError
    from tunelab.serve.chat import utf8_lines

    assert list(utf8_lines(io.BytesIO("\ufeff你好\nok\r\n".encode()))) == ["你好\n", "ok\r\n"]
    lines = utf8_lines(io.BytesIO(b"fine\nab\xc3(\n"))  # a cut 2-byte character
    assert next(lines) == "fine\n"
    with pytest.raises(ServeError, match=r"stdin line 2, byte 3: 0xc3 is not UTF-8 \(offset 7 of the input\)"):
        next(lines)


def test_a_turn_that_would_overflow_the_context_is_refused(random_qwen, tmp_path):
    saved = tmp_path / "chat.json"
    r = chat(random_qwen, "--max-new-tokens", "300", stdin="word " * 250 + f"\n/save {saved}\n")
    # 512-token context: the turn is refused and not kept; its reply line stays, empty, so lines still
    # match turns for a script reading stdout
    assert r.returncode == 0 and "more than the model's context of 512" in r.stderr
    assert r.stdout == "\n" and json.loads(saved.read_text()) == {"messages": []}


def test_help_lists_the_commands_without_importing_torch():
    code = ("import sys\nfrom tunelab.cli import main\nfor a in (['--help'], ['chat', '--help'], ['serve', '--help'],"
            " ['export', '--help']):\n    try:\n        main(a)\n    except SystemExit:\n        pass\n"
            "print('HEAVY', [m for m in ('torch', 'fastapi', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), check=True).stdout
    assert "HEAVY []" in out
    for text in ("chat", "OpenAI-compatible HTTP server", "merge a LoRA/DoRA adapter", "--api-key",
                 "--max-input-tokens", "--max-tokens-limit", "--system", "--dtype", "--overwrite"):
        assert text in out
