"""Plumbing every layer uses: writes that are never half-done and file hashes (fileio), progress
lines, the process heap setting, and the code digest that stands for the library in dvc.yaml
(provenance).
"""
