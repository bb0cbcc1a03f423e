-- Indexes behind the operator's queries (job list, dashboard, janitor, retention, dead letters),
-- each checked with EXPLAIN against 100,000 jobs and 1,000,000 tasks (tests/test_operations_scale.py).

-- GET /api/jobs and the dashboard: newest first, optionally by status, type and creation time.
CREATE INDEX IF NOT EXISTS jobs_created_idx ON app.jobs (created_at DESC, job_id);
CREATE INDEX IF NOT EXISTS jobs_status_created_idx ON app.jobs (status, created_at DESC, job_id);

-- Janitor: jobs whose cleanup has not run yet (running jobs and the few a crash interrupted).
CREATE INDEX IF NOT EXISTS jobs_uncleaned_idx ON app.jobs (updated_at) WHERE cleaned_up_at IS NULL;

-- Retention: finished jobs by the time they finished.
CREATE INDEX IF NOT EXISTS jobs_completed_idx ON app.jobs (completed_at) WHERE completed_at IS NOT NULL;

-- Viewer: the latest completed ingest of a table (its render_params).
CREATE INDEX IF NOT EXISTS jobs_ingest_table_idx ON app.jobs ((parameters ->> 'table_name'), completed_at DESC)
    WHERE job_type = 'ingest_vector' AND status = 'completed';

-- A failed job's waiting task messages are dropped by their parent job id (CoreMachine.fail_job);
-- retention deletes a removed job's dead-lettered job messages by its id.
CREATE INDEX IF NOT EXISTS queue_parent_job_idx ON app.queue_messages (queue, (body ->> 'parent_job_id'));
CREATE INDEX IF NOT EXISTS queue_job_idx ON app.queue_messages (queue, (body ->> 'job_id'))
    WHERE body ->> 'job_id' IS NOT NULL;

-- Queue panel and metrics: the oldest waiting message of a queue; dead letters, newest first.
CREATE INDEX IF NOT EXISTS queue_waiting_age_idx ON app.queue_messages (queue, enqueued_at)
    WHERE dead_lettered_at IS NULL;
CREATE INDEX IF NOT EXISTS queue_dead_letter_idx ON app.queue_messages (queue, id)
    WHERE dead_lettered_at IS NOT NULL;

-- Retention of relayed outbox rows (Service Bus backend).
CREATE INDEX IF NOT EXISTS outbox_sent_idx ON app.outbox (sent_at) WHERE sent_at IS NOT NULL;

-- What the janitor did, for /api/metrics: one counter per kind of work, summed over every run.
CREATE TABLE IF NOT EXISTS app.janitor_counters (
    name        text PRIMARY KEY,
    value       bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
