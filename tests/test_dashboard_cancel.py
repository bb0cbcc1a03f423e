"""The dashboard's Cancel button cancels a running job (POST /api/jobs/{job_id}/cancel, issue 14's route)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import WorkerPool
from tests.test_dashboard import KEY, _open_job, _wait_status, keyed_api, running_workers, submit, submitted  # noqa: F401
from tests.test_serving_viewer import Watched, browser, wait_until  # noqa: F401

pytestmark = [pytest.mark.serving, pytest.mark.slow]


def test_cancel_button_ends_the_job_cancelled(browser: Any, keyed_api: str, running_workers: WorkerPool,  # noqa: F811
                                              submitted: list[str], db: Any, nonce: str) -> None:  # noqa: F811
    job = submit(keyed_api, submitted, "hello_world", {"n": 40, "sleep_ms": 1500, "message": f"cancel me {nonce}"})
    w = Watched(browser)
    page = w.page
    try:
        w.open(f"{keyed_api}/dashboard")
        _open_job(page, job)
        page.fill("#write-key", KEY)
        page.click("#cancel")
        wait_until(page, "document.getElementById('action-result').dataset.outcome !== undefined")
        assert page.evaluate("document.getElementById('action-result').dataset.outcome") == "ok", \
            page.inner_text("#action-result")
        _wait_status(page, "cancelled", 60)
        assert page.is_disabled("#cancel")
        deadline = time.time() + 60
        while db.execute("SELECT status FROM app.jobs WHERE job_id = %s", [job]).fetchone()["status"] != "cancelled":
            assert time.time() < deadline, "the job did not end cancelled"
            time.sleep(0.2)
    finally:
        page.close()
