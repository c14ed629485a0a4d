"""gRPC edge: thin servicers that decode, call the engine, and encode."""
