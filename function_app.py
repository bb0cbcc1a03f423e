"""Azure Functions (Python v2) entry point.

HTTP: the whole FastAPI app behind one ASGI function (host.json sets routePrefix "" so
paths are /api/... locally and on Azure). Queues: Service Bus triggers for the jobs and tasks
queues run the same CoreMachine as `geoetl worker`. Timer: the janitor.

Auth: the Functions host's own key check is off (ANONYMOUS) because reads (status, features,
STAC, viewer) are public; write endpoints check API_KEYS themselves, in the Functions
convention (x-functions-key header or ?code=).
"""

from __future__ import annotations

import json
import logging

from infrastructure.memory import limit_allocator_growth

limit_allocator_growth()  # before anything below imports pyarrow: Arrow's pool is chosen when it loads

import azure.functions as func  # noqa: E402

from config import get_settings  # noqa: E402
from core.janitor import Janitor  # noqa: E402
from core.machine import CoreMachine  # noqa: E402
from core.models import JobQueueMessage, TaskQueueMessage  # noqa: E402
from triggers.app import create_app  # noqa: E402

settings = get_settings()
log = logging.getLogger("geoetl.functions")

app = func.AsgiFunctionApp(app=create_app(), http_auth_level=func.AuthLevel.ANONYMOUS)
_machine: CoreMachine | None = None


def machine() -> CoreMachine:
    global _machine
    if _machine is None:
        _machine = CoreMachine()
    return _machine


def _body(msg: func.ServiceBusMessage) -> dict:
    return json.loads(msg.get_body().decode("utf-8"))


def handle_service_bus_message(msg: func.ServiceBusMessage, kind: str) -> str:
    """Run one message; raising makes the host abandon it (Service Bus redelivers, then dead-letters)."""
    body = _body(msg)
    delivery_count = msg.delivery_count or 1
    if delivery_count > settings.queue_max_delivery_count:
        machine().fail_poison_message(body, delivery_count)
        return "poisoned"
    if kind == "job":
        return machine().process_job_message(JobQueueMessage.model_validate(body))
    return machine().process_task_message(TaskQueueMessage.model_validate(body))


@app.function_name("jobs_queue")
@app.service_bus_queue_trigger(arg_name="msg", queue_name=settings.jobs_queue, connection="ServiceBusConnection")
def jobs_queue(msg: func.ServiceBusMessage) -> None:
    outcome = handle_service_bus_message(msg, "job")
    log.info("job message %s: %s", msg.message_id, outcome)


@app.function_name("tasks_queue")
@app.service_bus_queue_trigger(arg_name="msg", queue_name=settings.tasks_queue, connection="ServiceBusConnection")
def tasks_queue(msg: func.ServiceBusMessage) -> None:
    outcome = handle_service_bus_message(msg, "task")
    log.info("task message %s: %s", msg.message_id, outcome)


@app.function_name("janitor")
@app.timer_trigger(arg_name="timer", schedule="0 */1 * * * *", run_on_startup=False)
def janitor(timer: func.TimerRequest) -> None:
    report = Janitor(machine()).run_once()
    log.info("janitor: %s", report)
