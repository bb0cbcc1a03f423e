-- Jobs, tasks and the postgres queue (which is also the transactional outbox).
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA IF NOT EXISTS app;
CREATE SCHEMA IF NOT EXISTS geo;

CREATE TABLE app.jobs (
    job_id          text PRIMARY KEY CHECK (job_id ~ '^[0-9a-f]{64}$'),
    job_type        text NOT NULL,
    parameters      jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    stage           int NOT NULL DEFAULT 1,
    total_stages    int NOT NULL,
    stage_results   jsonb NOT NULL DEFAULT '{}'::jsonb,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    result_data     jsonb,
    error_details   jsonb,
    run             int NOT NULL DEFAULT 1,          -- 1 + number of re-runs after failure
    stage_timings   jsonb NOT NULL DEFAULT '{}'::jsonb,  -- {"1": {"started_at":..,"completed_at":..}}
    cleaned_up_at   timestamptz,                     -- failure cleanup done (tables, chunks)
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
CREATE INDEX jobs_status_idx ON app.jobs (status, updated_at);
CREATE INDEX jobs_type_created_idx ON app.jobs (job_type, created_at DESC);

CREATE TABLE app.tasks (
    task_id         text PRIMARY KEY,
    parent_job_id   text NOT NULL REFERENCES app.jobs (job_id) ON DELETE CASCADE,
    job_type        text NOT NULL,
    task_type       text NOT NULL,
    stage           int NOT NULL,
    task_index      int NOT NULL,
    parameters      jsonb NOT NULL DEFAULT '{}'::jsonb,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'retrying', 'cancelled')),
    result_data     jsonb,
    error_details   text,
    attempts        int NOT NULL DEFAULT 0,
    heartbeat_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    completed_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_job_stage_idx ON app.tasks (parent_job_id, stage, status);

-- An audit trail of state transitions (stage advanced, job completed/failed, re-run).
CREATE TABLE app.job_events (
    id          bigserial PRIMARY KEY,
    job_id      text NOT NULL REFERENCES app.jobs (job_id) ON DELETE CASCADE,
    event       text NOT NULL,
    stage       int,
    detail      jsonb,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_events_job_idx ON app.job_events (job_id, id);

-- Peek-lock queue: a message is invisible while locked (visible_at in the future).
CREATE TABLE app.queue_messages (
    id              bigserial PRIMARY KEY,
    queue           text NOT NULL,
    message_id      text NOT NULL,
    body            jsonb NOT NULL,
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    visible_at      timestamptz NOT NULL DEFAULT now(),
    delivery_count  int NOT NULL DEFAULT 0,
    lock_token      uuid,
    dead_lettered_at timestamptz,
    dead_letter_reason text,
    UNIQUE (queue, message_id)
);
CREATE INDEX queue_ready_idx ON app.queue_messages (queue, visible_at, id) WHERE dead_lettered_at IS NULL;

CREATE FUNCTION app.notify_queue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('geoetl_queue', '');
    RETURN NULL;
END $$;
CREATE TRIGGER queue_messages_notify AFTER INSERT ON app.queue_messages
    FOR EACH STATEMENT EXECUTE FUNCTION app.notify_queue();

-- Outbox for backends outside the database (Service Bus): a relay sends rows and marks them sent.
CREATE TABLE app.outbox (
    id              bigserial PRIMARY KEY,
    queue           text NOT NULL,
    message_id      text NOT NULL,
    body            jsonb NOT NULL,
    scheduled_for   timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    attempts        int NOT NULL DEFAULT 0
);
CREATE INDEX outbox_unsent_idx ON app.outbox (created_at) WHERE sent_at IS NULL;

-- Moves a job from one stage to the next (status queued); returns the new stage.
-- Callers hold the job row lock; a stage is only ever left once because of the stage guard.
CREATE FUNCTION app.advance_stage(p_job_id text, p_from_stage int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    new_stage int;
BEGIN
    UPDATE app.jobs
       SET stage = p_from_stage + 1,
           status = 'queued',
           stage_timings = jsonb_set(stage_timings, ARRAY[p_from_stage::text],
               coalesce(stage_timings -> p_from_stage::text, '{}'::jsonb)
               || jsonb_build_object('completed_at', now())),
           updated_at = now()
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
CREATE FUNCTION app.complete_task(p_task_id text, p_result jsonb)
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
        UPDATE app.tasks SET status = 'cancelled', updated_at = now(), completed_at = now()
         WHERE task_id = p_task_id;
        outcome := 'job_finished'; RETURN NEXT; RETURN;
    END IF;
    UPDATE app.tasks SET status = 'completed', result_data = p_result, completed_at = now(), updated_at = now()
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
