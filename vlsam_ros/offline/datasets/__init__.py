"""Datasets in CODA's layout: reading, conversion to bags, the generated demo dataset."""
