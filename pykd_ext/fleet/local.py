"""The local engine: ``--jobs`` forked workers, one input per task, a deadline per input.

The triage process keeps each worker supplied with inputs (the current one and the next, see
ForkedWorker) and waits on all of them at once (their pipes and process sentinels, with the nearest
deadline as the wait's timeout). A worker that answers gets another input; one that passes its
current input's deadline is killed and replaced (``timeout``); one that dies is replaced
(``crashed``); the input it had not started yet goes back to the front of the queue. Results reach ``deliver`` in the triage process as they
arrive. Ctrl+C (KeyboardInterrupt in the triage process; the workers ignore SIGINT) kills the
workers and propagates: what was delivered stays delivered.
"""
from __future__ import annotations

import os
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Callable, Deque, Dict, List, Optional, Sequence

from .inputs import InputFile, collect_inputs
from .workers import ForkedWorker, Outcome, crashed_record, timeout_record

Deliver = Callable[[Outcome], None]
TimeoutFor = Callable[[InputFile], float]


class LocalEngine:
    name = "local"

    def __init__(self, jobs: Optional[int] = None):
        self.jobs = max(1, jobs or os.cpu_count() or 1)

    def list_inputs(self, paths: Sequence[str], globs: Sequence[str]) -> List[InputFile]:
        return collect_inputs(paths, globs)

    def run(self, items: Sequence[InputFile], timeout_for: TimeoutFor, deliver: Deliver) -> None:
        pending: Deque[InputFile] = deque(items)
        workers: List[ForkedWorker] = []
        try:
            workers = [ForkedWorker() for _ in range(min(self.jobs, len(pending)))]
            self._loop(workers, pending, timeout_for, deliver)
        finally:
            for worker in workers:
                worker.stop(kill=worker.item is not None)

    @staticmethod
    def _loop(workers: List[ForkedWorker], pending: Deque[InputFile], timeout_for: TimeoutFor,
              deliver: Deliver) -> None:
        def give_work(worker: ForkedWorker) -> None:
            while pending and worker.wants_work:
                item = pending.popleft()
                worker.assign(item, timeout_for(item))

        def replace(lost: ForkedWorker) -> ForkedWorker:
            pending.extendleft(reversed(lost.take_back()))  # what it had not started goes first again
            return ForkedWorker() if pending else lost

        for worker in workers:
            give_work(worker)
        while any(worker.item is not None for worker in workers):
            busy = [worker for worker in workers if worker.item is not None]
            by_handle: Dict[object, ForkedWorker] = {}
            for worker in busy:
                by_handle[worker.connection] = worker
                by_handle[worker.process.sentinel] = worker
            nearest = min(worker.deadline for worker in busy)
            ready = wait(list(by_handle), timeout=max(0.0, nearest - time.monotonic()))
            answered = {by_handle[handle] for handle in ready}
            now = time.monotonic()
            for position, worker in enumerate(workers):
                item = worker.item
                if item is None:
                    continue
                if worker in answered:
                    try:
                        outcome = worker.receive()
                    except (EOFError, OSError):
                        outcome = (crashed_record(item, now - worker.started, worker.name, worker.stop()), None)
                        workers[position] = worker = replace(worker)
                    deliver(outcome)
                elif now >= worker.deadline:
                    worker.stop(kill=True)
                    deliver((timeout_record(item, round(worker.deadline - worker.started, 3), worker.name), None))
                    workers[position] = worker = replace(worker)
                else:
                    continue
                give_work(worker)

    def close(self) -> None:
        """Nothing outlives run(): its workers are stopped when it returns."""
