"""The engine: run state machine, dispatch to workers, and waiting on runs."""
