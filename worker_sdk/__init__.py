"""stepd worker SDK."""
