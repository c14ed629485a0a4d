"""End-to-end tests: real server and worker processes over real gRPC."""
