"""Processes that analyze one input at a time, so that a bad input costs nothing but itself.

A worker receives an input, runs ``run_task`` on it and sends back (record, JSON report), then waits
for the next one. Whoever drives it keeps a deadline per input: a worker still busy at the deadline
is killed (status ``timeout``), a worker that dies (a signal, an exit) is noticed by its pipe closing
(status ``crashed``), and in both cases a new worker takes its place.

Two ways to start one:

- ``ForkedWorker``: forked from the triage process (``fork`` where the OS has it, after leakhunt's
  modules are imported, so a worker costs no Python start-up; ``spawn`` elsewhere, once per worker).
- ``HelperProcess``: ``python -m pykd_ext.fleet.workers`` started with ``subprocess``, talking over
  two pipes; what a Dask task uses, because a Dask worker is multi-threaded (forking it is unsafe) and
  often daemonic (multiprocessing refuses to start children there). It is started once per Dask
  worker thread and reused for every task that thread runs.
"""
from __future__ import annotations

import faulthandler
import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple

from .analysis import make_record, run_task, worker_name
from .inputs import STATUS_CRASHED, STATUS_TIMEOUT, InputFile

Outcome = Tuple[Dict[str, Any], Optional[str]]
READY = "ready"  # a helper's first message: its imports are done, deadlines may start
HELPER_START_TIMEOUT = 120.0


def serve(connection_in: Connection, connection_out: Connection) -> None:
    """A worker's life: inputs in, outcomes out, until the other side closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the triage process's to handle
    faulthandler.disable()  # a crash is reported in the input's record, not as a dump on stderr
    gc.freeze()  # what was imported before the fork is never scanned again (nor copied by the scans)
    done = 0
    while True:
        try:
            item = connection_in.recv()
        except (EOFError, OSError):
            return
        if item is None:  # the stop message
            return
        connection_out.send(run_task(item))
        done += 1
        if done & (done - 1) == 0:
            freeze_what_is_kept()


def freeze_what_is_kept() -> None:
    """Free this input's garbage, then take what is left out of the collector's scans: between inputs
    that is what the worker keeps for the next ones (the symbol files it parsed, tens of thousands of
    objects that every full collection would otherwise walk). Done after the 1st, 2nd, 4th, 8th...
    input, so that files parsed later are frozen too at a cost that stays small. What is frozen is
    freed when nothing refers to it any more, unless it is part of a reference cycle: a parsed file
    that the process caches let go stays (the caches keep a few dozen files; a worker that meets more
    builds than that holds on to a little more each time)."""
    gc.collect()
    gc.freeze()


def _forked_main(connection: Connection, parent_end: Connection) -> None:
    parent_end.close()  # the triage process's end, inherited by the fork
    serve(connection, connection)


@contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """Children started meanwhile inherit SIG_IGN for SIGINT from their first instruction on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def death_description(exit_code: Optional[int]) -> str:
    if exit_code is not None and exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"the analysis process died of {name} while analyzing it"
    return f"the analysis process exited (status {exit_code}) without a result"


def timeout_record(item: InputFile, seconds: float, worker: str) -> Dict[str, Any]:
    return make_record(item, STATUS_TIMEOUT, None, None, seconds, worker,
                       f"still running after {seconds:g} s (--timeout): the analysis was stopped")


def crashed_record(item: InputFile, seconds: float, worker: str, exit_code: Optional[int]) -> Dict[str, Any]:
    return make_record(item, STATUS_CRASHED, None, None, seconds, worker, death_description(exit_code))


def _start_method() -> str:
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


class ForkedWorker:
    """A worker process of the local engine and the inputs handed to it, analyzed in order.

    The input after the current one is handed over in advance (``QUEUE_DEPTH``), so that the worker
    starts it without waiting for the triage process to take the previous result. Only the current
    input has a deadline running: the next one's starts when the current one's result arrives.
    """

    context = multiprocessing.get_context(_start_method())
    QUEUE_DEPTH = 2

    def __init__(self) -> None:
        parent_end, child_end = self.context.Pipe()
        self.process = self.context.Process(target=_forked_main, args=(child_end, parent_end), daemon=True)
        with _interrupts_ignored():
            self.process.start()
        child_end.close()
        self.connection = parent_end
        self.name = worker_name(self.process.pid)
        self.queue: Deque[Tuple[InputFile, float]] = deque()  # (input, its timeout), the current one first
        self.started = 0.0
        self.deadline = 0.0

    @property
    def item(self) -> Optional[InputFile]:
        """The input being analyzed, or None when the worker is idle."""
        return self.queue[0][0] if self.queue else None

    @property
    def wants_work(self) -> bool:
        return len(self.queue) < self.QUEUE_DEPTH

    def _start_clock(self) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + self.queue[0][1]

    def assign(self, item: InputFile, timeout: float) -> None:
        self.queue.append((item, timeout))
        if len(self.queue) == 1:
            self._start_clock()
        try:
            self.connection.send(item)
        except OSError:  # it died meanwhile: its pipe says so at the next wait, and take_back() returns this input
            pass

    def receive(self) -> Outcome:
        """The outcome of the current input; raises EOFError when the worker died instead."""
        outcome = self.connection.recv()
        self.queue.popleft()
        if self.queue:
            self._start_clock()
        return outcome

    def take_back(self) -> List[InputFile]:
        """After the worker was lost: the inputs handed to it after the current one (not started)."""
        waiting = [item for item, _ in list(self.queue)[1:]]
        self.queue.clear()
        return waiting

    def stop(self, kill: bool = False) -> Optional[int]:
        """End the process (at once with ``kill``) and return its exit code."""
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except OSError:
                pass
        self.connection.close()
        self.process.join(5)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
        return self.process.exitcode


class HelperProcess:
    """A worker started as ``python -m pykd_ext.fleet.workers``, used one input at a time (Dask tasks)."""

    def __init__(self) -> None:
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        command = [sys.executable, "-m", "pykd_ext.fleet.workers", str(to_child_read), str(from_child_write)]
        with _interrupts_ignored():
            self.process = subprocess.Popen(command, pass_fds=(to_child_read, from_child_write),
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        os.close(to_child_read)
        os.close(from_child_write)
        self.sender = Connection(to_child_write, readable=False)
        self.receiver = Connection(from_child_read, writable=False)
        self.name = worker_name(self.process.pid)
        # Its start-up (Python and leakhunt's imports) is not charged to the first input's deadline.
        try:
            ready = self.receiver.poll(HELPER_START_TIMEOUT) and self.receiver.recv() == READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            exit_code = self.stop(kill=True)
            raise RuntimeError(f"the analysis helper process did not start (exit status {exit_code})")

    def run(self, item: InputFile, timeout: float) -> Tuple[Outcome, bool]:
        """(outcome, whether this helper is still usable) for one input."""
        started = time.monotonic()
        try:
            self.sender.send(item)
            if self.receiver.poll(timeout):
                return self.receiver.recv(), True
        except (EOFError, OSError):
            return (crashed_record(item, time.monotonic() - started, self.name, self.stop()), None), False
        self.stop(kill=True)
        return (timeout_record(item, timeout, self.name), None), False

    def stop(self, kill: bool = False) -> Optional[int]:
        if kill:
            self.process.kill()
        else:
            try:
                self.sender.send(None)
            except OSError:
                pass
        for connection in (self.sender, self.receiver):
            connection.close()
        try:
            return self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def main(argv) -> int:
    """``python -m pykd_ext.fleet.workers READ_FD WRITE_FD``: serve inputs over the two pipes."""
    sender = Connection(int(argv[1]), readable=False)
    sender.send(READY)
    serve(Connection(int(argv[0]), writable=False), sender)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
