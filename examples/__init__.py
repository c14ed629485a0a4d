"""Runnable stepd examples; each one is exercised by a test in tests/e2e/."""
