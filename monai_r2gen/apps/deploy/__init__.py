"""MONAI Deploy application: DICOM chest radiograph study in, DICOM Basic Text SR (+ JSON) out.

``app.py`` and ``operators.py`` import the MONAI Deploy App SDK, which lives in its own venv
(``scripts/setup_deploy_venv.sh``); this package itself imports nothing so that it stays importable everywhere.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["APP_DIR"]

APP_DIR = Path(__file__).resolve().parent
"""Folder of the application (``app.py``, ``app.yaml``, ``requirements.txt``): the argument of
``monai-deploy package``."""
