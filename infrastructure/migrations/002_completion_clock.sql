-- Completion times are the moment a task or stage finished, not the start of its transaction: a task
-- runs inside the transaction that completes it, so now() stamped completed_at with its start time.

CREATE OR REPLACE FUNCTION app.advance_stage(p_job_id text, p_from_stage int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    new_stage int;
BEGIN
    UPDATE app.jobs
       SET stage = p_from_stage + 1,
           status = 'queued',
           stage_timings = jsonb_set(stage_timings, ARRAY[p_from_stage::text],
               coalesce(stage_timings -> p_from_stage::text, '{}'::jsonb)
               || jsonb_build_object('completed_at', clock_timestamp())),
           updated_at = clock_timestamp()
     WHERE job_id = p_job_id AND stage = p_from_stage AND status IN ('queued', 'processing')
    RETURNING stage INTO new_stage;
    IF new_stage IS NULL THEN
        RAISE EXCEPTION 'job % is not at stage % (or already finished)', p_job_id, p_from_stage;
    END IF;
    INSERT INTO app.job_events (job_id, event, stage) VALUES (p_job_id, 'stage_advanced', p_from_stage);
    RETURN new_stage;
END $$;

-- The "last task turns out the lights" check. Marks the task completed only if it is
-- processing, serialises on the job row, counts unfinished siblings and, when none remain,
-- advances the job's stage (or reports that the job is done). The caller enqueues the next
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
    SELECT count(*) INTO unfinished FROM app.tasks
     WHERE parent_job_id = j.job_id AND app.tasks.stage = t.stage AND status <> 'completed';
    IF unfinished > 0 OR j.stage <> t.stage THEN
        outcome := 'task_completed'; RETURN NEXT; RETURN;
    END IF;
    outcome := 'stage_completed';
    IF t.stage < j.total_stages THEN
        next_stage := app.advance_stage(j.job_id, t.stage);
    END IF;
    RETURN NEXT;
END $$;
