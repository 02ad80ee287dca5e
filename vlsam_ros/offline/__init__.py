"""Desk tools: bag replay, evaluation, dataset conversion, the demo, labelling, tuning."""
