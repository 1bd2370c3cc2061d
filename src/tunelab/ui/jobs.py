"""Commands the board launches (train, run, eval, export): separate processes that outlive the browser
and the board itself.

    job = Jobs().start("train", ["train", "cfg.yaml", "output.dir=/abs/run"], target=Path("/abs/run"))

Each job gets a directory `$TUNELAB_HOME/ui/jobs/<id>/` with `job.json` (the command, the target
directory, host, pids with their start times, exit code) and `output.log` (everything it printed). The
command runs under a small keeper, `python -m tunelab.ui.jobs JOBDIR`, started in a session of its
own (`start_new_session`): closing the browser, or stopping the board, leaves it running; the keeper
waits for the command and writes its exit status into job.json, so a later board still knows how it
ended. The command is the CLI itself (`python -m tunelab ...`): the board never has a second copy of
what a command does. Stop sends SIGINT to the job's process group (the command and any workers it
started), SIGTERM 15 s later and SIGKILL 30 s later if it is still there; training keeps its
checkpoints, so a stopped training can be resumed.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..paths import home
from .liveness import HOST, process_alive, start_time

STOP_GRACE_S = (15.0, 30.0)  # SIGTERM, then SIGKILL, this long after the SIGINT of stop()


def jobs_dir() -> Path:
    return home() / "ui" / "jobs"


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def read(jobdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((jobdir / "job.json").read_text())
    except (OSError, ValueError):
        return None


def command_line(argv: list[str]) -> str:
    """How a person would type it: `tunelab train cfg.yaml key=value ...`."""
    return "tunelab " + " ".join(shlex.quote(a) for a in argv)


def state(job: dict[str, Any]) -> str:
    """running | finished | stopped | failed | dead | elsewhere (another machine: cannot tell)."""
    if job.get("host") != HOST:
        return "elsewhere"
    if process_alive(job.get("keeper_pid"), job.get("keeper_start")) or \
            process_alive(job.get("pid"), job.get("pid_start")):
        return "running"
    code = job.get("exit_code")
    if code is None:
        return "dead"  # the keeper itself was killed: the exit status is unknown
    if code == 0:
        return "finished"
    return "stopped" if job.get("stopped") else "failed"


def error_line(jobdir: Path) -> str | None:
    """What went wrong, from the end of the log: tunelab's one-line error, else the exception line."""
    try:
        with (jobdir / "output.log").open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 20000))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("tunelab") and ": error: " in line:
            return line
    for line in reversed(lines):
        if line and not line.startswith((" ", "\t")) and ("Error" in line or "Exception" in line):
            return line
    return None


def log_tail(jobdir: Path, max_bytes: int = 8000) -> str:
    try:
        with (jobdir / "output.log").open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))  # a progress bar: its last state


class Jobs:
    def __init__(self, directory: Path | None = None, cwd: Path | None = None):
        self.dir = Path(directory or jobs_dir())
        self.cwd = Path(cwd or Path.cwd())
        self._keepers: list[subprocess.Popen] = []

    def all(self) -> list[dict[str, Any]]:
        """Every job this machine's boards launched, newest first, with its `state`."""
        for p in list(self._keepers):  # reap keepers that ended (no zombies while the board runs)
            if p.poll() is not None:
                self._keepers.remove(p)
        out = []
        if not self.dir.is_dir():
            return out
        for d in sorted(self.dir.iterdir(), reverse=True):
            job = read(d)
            if job is not None:
                job["state"] = state(job)
                if job["state"] in ("failed", "dead"):
                    job["error"] = error_line(d)
                out.append(job)
        return out

    def get(self, job_id: str) -> dict[str, Any] | None:
        if not job_id or "/" in job_id or job_id.startswith("."):
            return None
        job = read(self.dir / job_id)
        if job is not None:
            job["state"] = state(job)
            job["error"] = error_line(self.dir / job_id) if job["state"] in ("failed", "dead") else None
            job["log"] = log_tail(self.dir / job_id)
        return job

    def start(self, kind: str, argv: list[str], target: Path, files: dict[str, str] | None = None,
              shown: str | None = None) -> dict[str, Any]:
        """Launch `tunelab ARGV...`; `files` (name -> text) are written into the job's directory first and
        an argument equal to one of their names becomes its path; `shown` is the command as the form
        showed it (defaults to the command line)."""
        job_id = time.strftime("%Y%m%d-%H%M%S-") + kind + "-" + uuid.uuid4().hex[:6]
        jobdir = self.dir / job_id
        jobdir.mkdir(parents=True)
        for name, text in (files or {}).items():
            (jobdir / name).write_text(text, encoding="utf-8")
        argv = [str(jobdir / a) if a in (files or {}) else a for a in argv]
        job = {"id": job_id, "kind": kind, "argv": [sys.executable, "-m", "tunelab", *argv],
               "command": command_line(argv), "shown": shown or command_line(argv), "target": str(Path(target).resolve()), "cwd": str(self.cwd),
               "host": HOST, "created": time.time()}
        _write(jobdir / "job.json", job)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        keeper = subprocess.Popen([sys.executable, "-m", "tunelab.ui.jobs", str(jobdir)], cwd=self.cwd, env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        self._keepers.append(keeper)
        deadline = time.time() + 10  # the keeper writes the command's pid as soon as it started it
        while time.time() < deadline and "pid" not in (read(jobdir) or {}) and keeper.poll() is None:
            time.sleep(0.05)
        return read(jobdir) or job

    def stop(self, job_id: str) -> bool:
        """SIGINT to the job's process group now, SIGTERM and SIGKILL later if it is still there."""
        job = self.get(job_id)
        if job is None or job["state"] != "running":
            return False
        pgid = job["keeper_pid"]  # the keeper leads the session and the process group
        jobdir = self.dir / job_id
        _write(jobdir / "stop.json", {"at": time.time()})

        def escalate() -> None:
            start = time.time()
            for sig, after in zip((signal.SIGTERM, signal.SIGKILL), STOP_GRACE_S):
                while time.time() - start < after:
                    if state(read(jobdir) or {}) != "running":
                        return
                    time.sleep(0.5)
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    return

        try:
            os.killpg(pgid, signal.SIGINT)
        except ProcessLookupError:
            return False
        threading.Thread(target=escalate, daemon=True).start()
        return True


def keep(jobdir: Path) -> int:
    """The keeper: run the job's command with its output in output.log, then record how it ended."""
    job = read(jobdir) or {}
    stopped = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:  # the command got the same signal; wait for it
        stopped.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    with (jobdir / "output.log").open("ab") as log:
        log.write(f"$ {job.get('command')}\n".encode())
        log.flush()
        proc = subprocess.Popen(job["argv"], cwd=job["cwd"], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        job.update(keeper_pid=os.getpid(), keeper_start=start_time(os.getpid()), pid=proc.pid,
                   pid_start=start_time(proc.pid), started=time.time())
        _write(jobdir / "job.json", job)
        code = proc.wait()
    job.update(exit_code=code, ended=time.time(),
               stopped=stopped.is_set() or (jobdir / "stop.json").is_file())
    _write(jobdir / "job.json", job)
    return 0


if __name__ == "__main__":
    sys.exit(keep(Path(sys.argv[1])))
