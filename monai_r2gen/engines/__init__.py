"""Engines: freeze policies (stages), training and evaluation workflows."""
