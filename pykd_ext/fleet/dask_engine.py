"""The Dask engine: each input is one task on an existing ``dask.distributed`` cluster.

Needs ``pip install "leakhunt[cluster]"`` (Dask needs Python >= 3.10) on the machine running
``leakhunt triage`` and on every worker. Paths are resolved on the workers: the folders are listed
by a task on a worker, and each task opens its input there, so the dumps need to be on storage the
workers share (the machine running triage need not see them). Each task analyses its input in a
helper process of its worker thread (``workers.HelperProcess``) with the input's deadline, so a dump
that crashes or hangs the analysis costs that task only and never the Dask worker (Dask would mark
every task that was on a dead worker as suspect). Results are streamed back with ``as_completed``.
"""
from __future__ import annotations

import threading
from typing import List, Optional, Sequence

from .analysis import make_record
from .inputs import STATUS_CRASHED, InputFile, collect_inputs
from .local import Deliver, TimeoutFor
from .workers import HelperProcess, Outcome

CONNECT_TIMEOUT = "10s"
INSTALL_HINT = 'the Dask engine needs dask.distributed: pip install "leakhunt[cluster]" (Python >= 3.10)'

_helpers = threading.local()


class EngineError(Exception):
    """The cluster cannot be used (one line)."""


def triage_task(item: InputFile, timeout: float) -> Outcome:
    """What runs on a Dask worker for one input: the analysis in this thread's helper process."""
    helper: Optional[HelperProcess] = getattr(_helpers, "helper", None)
    if helper is None:
        helper = HelperProcess()
    outcome, usable = helper.run(item, timeout)
    _helpers.helper = helper if usable else None
    return outcome


class DaskEngine:
    name = "dask"

    def __init__(self, address: Optional[str] = None, scheduler_file: Optional[str] = None):
        try:
            from distributed import Client
        except ImportError:
            raise EngineError(INSTALL_HINT) from None
        where = address or f"the scheduler of {scheduler_file}"
        try:
            if scheduler_file:
                self.client = Client(scheduler_file=scheduler_file, timeout=CONNECT_TIMEOUT)
            else:
                self.client = Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, ValueError, TimeoutError) as error:
            raise EngineError(f"cannot reach {where}: {' '.join(str(error).split()) or type(error).__name__}") from None

    def list_inputs(self, paths: Sequence[str], globs: Sequence[str]) -> List[InputFile]:
        """The inputs as a worker sees them."""
        return self.client.submit(collect_inputs, list(paths), list(globs), pure=False).result()

    def run(self, items: Sequence[InputFile], timeout_for: TimeoutFor, deliver: Deliver) -> None:
        from distributed import as_completed
        futures = {self.client.submit(triage_task, item, timeout_for(item), pure=False): item for item in items}
        try:
            for future in as_completed(futures):
                item = futures.pop(future)
                try:
                    outcome = future.result()
                except Exception as error:  # the task itself failed (its worker was lost, ...)
                    outcome = (make_record(item, STATUS_CRASHED, None, None, 0.0, "dask",
                                           f"the Dask task failed: {type(error).__name__}: {error}"), None)
                deliver(outcome)
                future.release()
        finally:
            if futures:
                self.client.cancel(list(futures))

    def close(self) -> None:
        self.client.close()
