"""Integrations: MONAI Label and MONAI Deploy applications."""
