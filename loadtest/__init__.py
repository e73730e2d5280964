"""Device fleet simulator, accuracy scoring and benchmarks."""
