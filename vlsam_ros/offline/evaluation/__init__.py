"""Offline evaluation: class-agnostic recall, LVIS-style AP, text encoders, vlsam-evaluate."""
