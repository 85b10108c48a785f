"""Analyses of soft visual prompts and attention."""
