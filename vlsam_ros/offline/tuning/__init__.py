"""Tuning the configuration against labelled data: vlsam-tune (issue 19)."""
