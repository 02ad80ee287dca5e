"""Random-weight test models and generated scenes, for tests and benchmarks only."""
