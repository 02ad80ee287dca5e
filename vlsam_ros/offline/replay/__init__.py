"""Replaying recorded bags through the pipeline: bag I/O, truncated-MCAP salvage."""
