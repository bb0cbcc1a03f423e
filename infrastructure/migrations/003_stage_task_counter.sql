-- The last-task check counted the stage's unfinished tasks on every completion while holding the
-- job's row lock: O(tasks) per completion, so O(tasks^2) per stage, all of it serialised on one row.
-- A stage now starts with its task count and each completion takes one off, under the same lock.

ALTER TABLE app.jobs ADD COLUMN IF NOT EXISTS stage_tasks_left int;

-- The "last task turns out the lights" check. Marks the task completed only if it is
-- processing, serialises on the job row, takes one off the stage's count of unfinished tasks and,
-- when none remain, advances the job's stage (or reports that the job is done). The caller enqueues the next
-- stage's message (or finalises the job) in the same transaction.
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
    IF j.status = 'failed' OR j.status = 'completed' THEN
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
