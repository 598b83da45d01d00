-- The manifest of a task created with `--files-from` (sealed like the task's endpoints: its
-- endpoint may carry credentials): read by the task's root List job instead of a listing.
ALTER TABLE tasks ADD COLUMN files_from TEXT;
