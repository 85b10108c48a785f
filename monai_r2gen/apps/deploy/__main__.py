"""``python -m monai_r2gen.apps.deploy`` runs the application (also the entry point of a packaged app folder)."""

from __future__ import annotations

from monai_r2gen.apps.deploy.app import main

main()
