"""Offline evaluation: splitters, metrics, reports."""
