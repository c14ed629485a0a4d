"""stepd server: gRPC handlers, the engine, and the store."""

__version__ = "0.1.0"
