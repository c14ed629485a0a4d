"""The server's HTTP listener: health probes, Prometheus metrics and webhooks
(``listener`` builds it; one module per group of routes)."""
