"""Infer tasks of the monai-r2gen MONAI Label app."""
