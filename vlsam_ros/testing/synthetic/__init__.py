"""Generated data with ground truth for tests and benchmarks (no downloads): moving
scenes for the tracker, and the oracle models that see them exactly."""
