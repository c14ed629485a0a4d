"""stepd benchmarks: ``python bench/run.py``."""
