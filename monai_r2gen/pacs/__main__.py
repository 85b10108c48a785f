"""``python -m monai_r2gen.pacs``: the ``monai-r2gen pacs`` command on its own."""

from __future__ import annotations

import sys

from monai_r2gen.pacs.cli import main

if __name__ == "__main__":
    sys.exit(main())
