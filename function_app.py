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
from pydantic import ValidationError  # noqa: E402

from config import get_settings  # noqa: E402
from core.janitor import Janitor  # noqa: E402
from core.machine import CoreMachine  # noqa: E402
from core.models import JobQueueMessage, TaskQueueMessage  # noqa: E402
from infrastructure.queues.base import redelivery_delay  # noqa: E402
from infrastructure.queues.servicebus import ServiceBusQueue  # noqa: E402
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


def _deliveries(msg: func.ServiceBusMessage) -> int:
    """This message's deliveries plus those of the messages it replaces (a redelivery copy)."""
    from infrastructure.queues.servicebus import prior_deliveries

    return (msg.delivery_count or 1) + prior_deliveries(msg.application_properties or msg.user_properties)


def handle_service_bus_message(msg: func.ServiceBusMessage, kind: str) -> str:
    """Run one message. Returning lets the host complete it (host.json autoCompleteMessages).

    On the queue's last allowed delivery the message's job is failed instead (QUEUE_MAX_DELIVERY_COUNT
    must equal the queue's MaxDeliveryCount: the service dead-letters the message after that delivery,
    where no job would ever see it). Anything that escapes the CoreMachine (database unreachable, a
    stage that could not start) is redelivered after a backoff: a copy is scheduled and this one
    completed, because an abandoned message comes back at once. Raising is left for when even that
    fails; the host then abandons the message.
    """
    body = _body(msg)
    deliveries = _deliveries(msg)
    if deliveries >= settings.queue_max_delivery_count:
        return machine().fail_poison_message(body, deliveries)
    try:
        if kind == "job":
            return machine().process_job_message(JobQueueMessage.model_validate(body))
        return machine().process_task_message(TaskQueueMessage.model_validate(body))
    except ValidationError:
        raise  # malformed: the service dead-letters it after its deliveries
    except Exception:
        delay = redelivery_delay(deliveries)
        log.exception("message %s failed; delivering it again in %.0fs", msg.message_id, delay)
        queue = settings.jobs_queue if kind == "job" else settings.tasks_queue
        bus = machine().queue
        if not isinstance(bus, ServiceBusQueue):
            raise
        bus.redeliver_later(queue, str(msg.message_id), body, deliveries, delay)
        return "redelivery_scheduled"


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
