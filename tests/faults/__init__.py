"""Fault injection: real server and worker processes killed, restarted, stopped and
cancelled under load, then every crash-safety guarantee checked (``checker.py``)."""
