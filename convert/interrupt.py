"""SIGTERM and SIGINT stop a conversion: its child processes are killed, its scratch folder is
removed, and the process exits 128 + the signal's number. The destination is never touched (the
pipeline writes only into the scratch folder and renames it into place at the end).

The handler does not raise. Python runs it between bytecodes wherever the main thread happens to
be, and during a conversion that is often Python code called back from C++ (torch's and
onnxruntime's bindings, imports run from extension modules). An exception raised there can cross
the C++ frames, and pybind11 then calls std::terminate: the process aborts (SIGABRT) with every
cleanup skipped. Interrupted at random points of the import phase under load, about 1 run in 40
ended that way (`terminate called after throwing an instance of 'pybind11::error_already_set'`
from `torch._C._c10d_init`), leaving the scratch folder behind. So the handler cleans up itself
and leaves with os._exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import IO, NoReturn

_scratch: list[Path] = []
_children: list[subprocess.Popen[bytes]] = []
# While a child is being started it has a process but no Popen to kill it by yet: a signal that
# arrives then waits here until the child is registered.
_starting = False
_deferred: list[int] = []


def install() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)


@contextmanager
def scratch_folder(path: Path) -> Iterator[Path]:
    """A new folder that is removed when the block ends, however it ends, interrupted included."""
    path.mkdir()
    _scratch.append(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        _scratch.remove(path)


def run_child(command: Sequence[str], output: IO[str]) -> int:
    """Run a command with its output in `output`; an interruption kills it first."""
    global _starting  # noqa: PLW0603 (the signal handler reads it)
    _starting = True
    try:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)  # noqa: S603 (no shell)
        _children.append(process)
    finally:
        _starting = False
        if _deferred:
            _exit(_deferred[0])
    with process:
        try:
            return process.wait()
        finally:
            _children.remove(process)


def _stop(signum: int, _frame: FrameType | None) -> None:
    if _starting:
        _deferred.append(signum)
        return
    _exit(signum)


def _exit(signum: int) -> NoReturn:
    for child in list(_children):
        # Not child.wait(): the interrupted main thread may hold that Popen's wait lock.
        child.kill()
        with suppress(ChildProcessError):  # already reaped
            os.waitpid(child.pid, 0)
    for path in list(_scratch):
        # A thread of the conversion (a download) may still write into it meanwhile: try again.
        for _ in range(3):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                break
    name = signal.Signals(signum).name
    print(f"error: interrupted by {name}; the scratch folder is removed and the destination untouched", file=sys.stderr)
    sys.stderr.flush()
    os._exit(128 + signum)
