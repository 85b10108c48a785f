"""MONAI Label app serving radiology reports over REST.

``main.py`` (the app) and ``lib/infers/report.py`` (the infer task) import ``monailabel``, which lives in its own venv
(``scripts/setup_label_venv.sh``); this package itself imports nothing so that it stays importable everywhere.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["APP_DIR"]

APP_DIR = Path(__file__).resolve().parent
"""Folder holding the app's ``main.py`` (copy it to a writable app folder: ``start_server`` creates sub-folders)."""
