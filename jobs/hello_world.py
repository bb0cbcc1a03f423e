"""Diagnostics job: stage 1 fans out n greetings, stage 2 sums them."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from core.models import JobExecutionContext, TaskDefinition
from jobs.base import JobBase, JobParameters, Stage, generate_task_id


class HelloWorldParameters(JobParameters):
    n: int = Field(3, ge=0, le=10_000, description="Tasks in stage 1.")
    failure_rate: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Share of tasks whose first attempt fails (deterministic); attempt k fails with rate**k.",
    )
    sleep_ms: int = Field(0, ge=0, le=600_000, description="Time each stage-1 task sleeps.")
    message: str = Field("", max_length=1000, description="Free text; makes otherwise equal jobs distinct.")


class HelloWorldJob(JobBase):
    job_type = "hello_world"
    description = "Fan out n tasks, then sum their results (diagnostics and benchmarks)"
    stages = [
        Stage(1, "greet", "hello_world_greet", "fan_out", "n independent tasks"),
        Stage(2, "sum", "hello_world_sum", "single", "one task that sums stage 1"),
    ]
    Parameters = HelloWorldParameters

    @classmethod
    def create_tasks_for_stage(
        cls, stage: int, params: dict[str, Any], job_id: str, previous_results: list[dict[str, Any]]
    ) -> list[TaskDefinition]:
        if stage == 1:
            common = {k: params[k] for k in ("failure_rate", "sleep_ms", "message")}
            return [
                TaskDefinition(
                    task_id=generate_task_id(job_id, 1, f"greet-{i}"),
                    task_type="hello_world_greet",
                    parameters={"index": i, **common},
                )
                for i in range(params["n"])
            ]
        if stage == 2:
            values = [r.get("value", 0) for r in previous_results]
            return [
                TaskDefinition(
                    task_id=generate_task_id(job_id, 2, "sum"),
                    task_type="hello_world_sum",
                    parameters={"values": values, "failure_rate": params["failure_rate"]},
                )
            ]
        raise ValueError(f"hello_world has no stage {stage}")

    @classmethod
    def finalize_job(cls, context: JobExecutionContext) -> dict[str, Any]:
        by_stage: dict[int, int] = {}
        for t in context.task_results:
            by_stage[t.stage] = by_stage.get(t.stage, 0) + 1
        sums = [t.result_data for t in context.task_results if t.task_type == "hello_world_sum"]
        return {
            "job_type": cls.job_type,
            "n": context.parameters["n"],
            "sum": sums[0].get("sum") if sums else None,
            "tasks_per_stage": {str(k): v for k, v in sorted(by_stage.items())},
            "stages_completed": context.current_stage,
            "total_tasks_executed": len(context.task_results),
        }
