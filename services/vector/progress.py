"""How far a running ingest task has got, for the job status: written on its own connection (the task's
transaction commits only at the end), at most every PROGRESS_SECONDS, never failing the task."""

from __future__ import annotations

import logging
import time

from psycopg.types.json import Jsonb

from infrastructure import database

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 2.0


class TaskProgress:
    def __init__(self, task_id: str, every: float = PROGRESS_SECONDS) -> None:
        self.task_id, self.every = task_id, every
        self.features_done = 0
        self.features_repaired = 0
        self._last = time.monotonic()

    def read(self, n: int) -> None:
        self.features_done += n
        self._maybe_write()

    def repaired(self, n: int) -> None:
        self.features_repaired += n
        self._maybe_write()

    def _maybe_write(self) -> None:
        if time.monotonic() - self._last >= self.every:
            self.write()

    def write(self) -> None:
        self._last = time.monotonic()
        doc = {"features_done": self.features_done, "features_repaired": self.features_repaired}
        try:
            with database.connection() as conn:
                conn.execute(
                    "UPDATE app.tasks SET progress = %s WHERE task_id = %s AND status = 'processing'",
                    [Jsonb(doc), self.task_id],
                )
        except Exception:  # progress is informative; the task goes on without it
            log.exception("progress update of %s failed", self.task_id)
