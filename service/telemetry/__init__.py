"""What the server shows of itself: Prometheus metrics of runs, steps, workers,
the store and RPCs (``metrics``, ``rpc_metrics``)."""
