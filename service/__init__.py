"""stepd server: gRPC handlers, engine and store."""
