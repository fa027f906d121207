"""Results a person reads: per-class figures from a confusion (analysis), the
report's pictures (plots) and the report files themselves (report). No task
and no engine here: each task composes its own sections from these."""
