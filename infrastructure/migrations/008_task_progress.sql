-- A running task's own progress (features read and repaired so far), written from outside its
-- transaction so that the job status shows it while the task is still running.
ALTER TABLE app.tasks ADD COLUMN IF NOT EXISTS progress jsonb;
