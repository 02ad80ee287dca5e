"""Distributed labelling of recorded data with Ray (issue 17)."""
