"""``python -m monai_r2gen`` runs the ``monai-r2gen`` command."""

from __future__ import annotations

import sys

from monai_r2gen.cli import main

sys.exit(main())
