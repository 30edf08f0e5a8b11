"""Metrics over samples and features."""
