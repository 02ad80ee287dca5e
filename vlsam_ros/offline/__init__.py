"""Desk tools: replay, evaluation, datasets, labelling and tuning (no ROS needed)."""
