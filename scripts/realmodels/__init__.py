"""The real-model corpus harness behind `make realmodels` (see run.py)."""
