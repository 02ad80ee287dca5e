"""Random test-model builders and synthetic scenes (tests and demos only)."""
