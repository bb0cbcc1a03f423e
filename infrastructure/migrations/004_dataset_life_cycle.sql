-- Dataset life cycle: jobs can be cancelled, and a cancelled job is finished like a completed or failed one.
-- Ingested tables are loaded in a private staging schema that nothing serves, and published from it.

CREATE SCHEMA IF NOT EXISTS geoetl_staging;

ALTER TABLE app.jobs DROP CONSTRAINT IF EXISTS jobs_status_check;
ALTER TABLE app.jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'cancelled'));

-- As in 003, but a cancelled job is finished too: a task that completes after its job was cancelled
-- is cancelled itself and its effects are rolled back by the caller (outcome 'job_finished').
CREATE OR REPLACE FUNCTION app.complete_task(p_task_id text, p_result jsonb)
RETURNS TABLE (outcome text, job_id text, job_type text, stage int, total_stages int, next_stage int, run int)
LANGUAGE plpgsql AS $$
DECLARE
    t app.tasks%ROWTYPE;
    j app.jobs%ROWTYPE;
    unfinished int;
BEGIN
    SELECT * INTO t FROM app.tasks WHERE task_id = p_task_id;
    IF NOT FOUND THEN
        outcome := 'missing'; RETURN NEXT; RETURN;
    END IF;
    -- Lock the job first, then the task: every writer takes them in this order.
    SELECT * INTO j FROM app.jobs WHERE app.jobs.job_id = t.parent_job_id FOR UPDATE;
    SELECT * INTO t FROM app.tasks WHERE task_id = p_task_id FOR UPDATE;
    job_id := j.job_id; job_type := j.job_type; stage := t.stage; total_stages := j.total_stages; run := j.run;
    IF t.status <> 'processing' THEN
        outcome := 'duplicate'; RETURN NEXT; RETURN;
    END IF;
    IF j.status NOT IN ('queued', 'processing') THEN
        UPDATE app.tasks SET status = 'cancelled', updated_at = clock_timestamp(), completed_at = clock_timestamp()
         WHERE task_id = p_task_id;
        outcome := 'job_finished'; RETURN NEXT; RETURN;
    END IF;
    UPDATE app.tasks SET status = 'completed', result_data = p_result, completed_at = clock_timestamp(), updated_at = clock_timestamp()
     WHERE task_id = p_task_id;
    IF j.stage <> t.stage THEN
        outcome := 'task_completed'; RETURN NEXT; RETURN;
    END IF;
    IF j.stage_tasks_left IS NULL THEN  -- fanned out before the counter existed
        SELECT count(*) INTO unfinished FROM app.tasks
         WHERE parent_job_id = j.job_id AND app.tasks.stage = t.stage AND status <> 'completed';
    ELSE
        UPDATE app.jobs SET stage_tasks_left = stage_tasks_left - 1
         WHERE app.jobs.job_id = j.job_id RETURNING stage_tasks_left INTO unfinished;
    END IF;
    IF unfinished > 0 THEN
        outcome := 'task_completed'; RETURN NEXT; RETURN;
    END IF;
    outcome := 'stage_completed';
    IF t.stage < j.total_stages THEN
        next_stage := app.advance_stage(j.job_id, t.stage);
    END IF;
    RETURN NEXT;
END $$;
