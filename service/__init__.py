"""stepd server (``stepd.server``): gRPC handlers, the engine, and the store.

Installed with ``pip install 'stepd[server]'``; run with ``stepd serve``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stepd")
except PackageNotFoundError:  # pragma: no cover - a checkout without an install
    __version__ = "0+unknown"
