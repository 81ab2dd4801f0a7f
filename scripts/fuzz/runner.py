"""Run cases in child processes: long-lived workers, one temporary directory per case.

A `Worker` is one `worker.py` process that imported onnxopt once. A crash (the worker dies) or
a hang (no answer within the per-case timeout; the worker's whole process group is killed) is
recorded for the case and the worker is restarted for the next one. Workers are also recycled
every `recycle` cases so memory growth in one case cannot affect later ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import Any

from scripts.fuzz.cases import Case

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")


@dataclass(frozen=True)
class Outcome:
    """What one case did: how it ended, its output, and what changed on disk."""

    case: Case
    status: str  # "exit" | "exception" (escaped main) | "crash" | "hang"
    rc: int | None  # exit code for "exit", the negative signal for "crash"
    stdout: str
    stderr: str
    secs: float
    new_paths: tuple[str, ...]  # files and folders that were not there before the run
    changed_inputs: tuple[str, ...]  # inputs whose sha256 changed (or that disappeared)


class WorkerDied(Exception):
    """The worker exited (crashed) while running a case."""


class Worker:
    """One long-lived worker process that runs CLI invocations in-process."""

    def __init__(self, home: Path, timeout: float) -> None:
        self.home = home
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self.served = 0

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("MPLBACKEND", "Agg")
        with open(self.home / "worker.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.home,
                env=env,
                start_new_session=True,  # a hang is killed with its whole process group
            )
        self._buf = b""
        self.served = 0
        ready = self._read_line(120.0)
        if ready is None or "ready" not in ready:
            self.kill()
            raise RuntimeError(f"fuzz worker did not start; see {self.home / 'worker.log'}")

    def _read_line(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON line from the worker; None on timeout; WorkerDied on EOF."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise WorkerDied
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request; the reply, or {"status": "crash"|"hang"} (the worker is then gone)."""
        if self.proc is None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.served += 1
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            reply = self._read_line(self.timeout)
        except (WorkerDied, BrokenPipeError):
            rc = self.proc.wait()
            self.proc = None
            return {"status": "crash", "rc": rc}
        if reply is None:
            self.kill()
            return {"status": "hang", "rc": None}
        reply["status"] = "exit" if reply.get("exc") is None else "exception"
        return reply

    def kill(self) -> None:
        """Kill the worker and everything it started (its own process group)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def close(self) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _snapshot(root: Path) -> set[str]:
    """Every file and folder under root (folders end with '/'), relative to root."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        out.update(f"{rel / d}/" for d in dirnames)
        out.update(str(rel / f) for f in filenames)
    return out


def materialize(case: Case, where: Path) -> None:
    """Create the case's folders and input files under where."""
    for sub in ("in", "out", "tmp"):
        (where / sub).mkdir(parents=True, exist_ok=True)
    for f in case.files:
        target = where / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.link is not None:
            if f.symlink:
                target.symlink_to(os.path.relpath(where / f.link, target.parent))
            else:
                os.link(where / f.link, target)
        elif f.data is not None:
            target.write_bytes(f.data)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


Keep = tuple[Path, Callable[[Outcome], bool]]


def run_case(worker: Worker, case: Case, scratch: Path, keep: Keep | None = None) -> Outcome:
    """Run one case in a fresh folder under scratch.

    keep=(folder, predicate): copy the case's folder (as the run left it) into folder when
    predicate(outcome) holds, e.g. for failing cases.
    """
    where = Path(tempfile.mkdtemp(prefix=f"case{case.index}-", dir=scratch))
    materialize(case, where)
    # Links are not hashed: replacing a link (not its target) is judged by the case's expectation.
    inputs = {f.path: _sha(where / f.path) for f in case.files if f.data is not None and f.link is None}
    before = _snapshot(where)
    out_file, err_file = worker.home / "case.out", worker.home / "case.err"
    request = {"argv": list(case.argv), "cwd": str(where), "tmp": str(where / "tmp"),
               "stdout": str(out_file), "stderr": str(err_file)}  # fmt: skip
    start = time.perf_counter()
    reply = worker.run(request)
    secs = reply.get("secs", time.perf_counter() - start)
    changed = tuple(p for p, h in inputs.items() if _sha(where / p) != h)
    outcome = Outcome(
        case=case,
        status=reply["status"],
        rc=reply.get("rc"),
        stdout=_read(out_file),
        stderr=_read(err_file),
        secs=float(secs),
        new_paths=tuple(sorted(_snapshot(where) - before)),
        changed_inputs=changed,
    )
    if keep is not None and keep[1](outcome):
        shutil.copytree(where, keep[0] / f"case{case.index}", symlinks=True, dirs_exist_ok=True)
    shutil.rmtree(where, ignore_errors=True)
    return outcome


def run_cases(
    cases: Iterable[Case],
    *,
    jobs: int = 1,
    timeout: float = 30.0,
    recycle: int = 300,
    keep: Keep | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run every case on `jobs` workers; outcomes in case order."""
    queue: Queue[Case] = Queue()
    for c in cases:
        queue.put(c)
    results: list[Outcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def serve(slot: int, scratch: Path) -> None:
        home = scratch / f"worker{slot}"
        home.mkdir()
        worker = Worker(home, timeout)
        try:
            for case in _drain(queue):
                if worker.proc is not None and worker.served >= recycle:
                    worker.close()
                outcome = run_case(worker, case, scratch, keep)
                with lock:
                    results.append(outcome)
                    if on_outcome is not None:
                        on_outcome(outcome)
        except BaseException as e:  # re-raised in the caller's thread below
            errors.append(e)
        finally:
            worker.close()

    with tempfile.TemporaryDirectory(prefix="onnxopt-fuzz-") as tmp:
        threads = [threading.Thread(target=serve, args=(i, Path(tmp))) for i in range(max(1, jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return sorted(results, key=lambda o: o.case.index)


def _drain(queue: Queue[Case]) -> Iterator[Case]:
    while True:
        try:
            yield queue.get_nowait()
        except Empty:
            return
