"""MONAI Label app of monai-r2gen: a report-generation model served over REST.

Start it (in the MONAI Label venv, see ``scripts/setup_label_venv.sh``)::

    monailabel start_server --app APP_DIR --studies STUDIES_DIR --conf model_dir /path/to/trained/model \
        --host 127.0.0.1 --port 8000

``APP_DIR`` holds this file (``start_server`` creates ``model/``, ``logs/`` and ``bin/`` in it, so use a writable copy).
``STUDIES_DIR`` is a local folder: its top-level DICOM / PNG / JPEG files are the datastore's images (id = file name
without suffix); every DICOM study below it, in any sub-folder, can also be asked for by its Study Instance UID, which
reports on all its views together (frontal first). A DICOMweb URL works too (MONAI Label downloads the series).

Conf options (``--conf KEY VALUE``): ``model_dir`` (required), ``model_name`` (default ``report``), ``device``,
``num_beams``, ``max_new_tokens`` (defaults for every request; a request may override them in ``params``).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask

from monai_r2gen.apps.monailabel.lib.infers.report import GENERATION_PARAMS, ReportInferTask
from monai_r2gen.data.studies import collect_studies

logger = logging.getLogger(__name__)

IMAGE_PATTERNS = ["*.dcm", "*.png", "*.jpg", "*.jpeg"]


class R2GenApp(MONAILabelApp):
    """Serves one report model; ``POST /infer/<model_name>?image=<image id or Study Instance UID>``."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        model_dir = conf.get("model_dir") or os.environ.get("R2GEN_MODEL_DIR")
        if not model_dir:
            raise ValueError("give the trained model folder: --conf model_dir /path/to/model")
        self.model_dir = os.path.abspath(os.path.expanduser(model_dir))
        self.model_name = conf.get("model_name", "report")
        self.device = conf.get("device") or None
        self.generation = {k: kind(conf[k]) for k, kind in GENERATION_PARAMS.items() if conf.get(k)}
        self._study_index: dict[str, list[str]] = {}
        self._index_lock = threading.Lock()
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai-r2gen",
            description="Chest X-ray radiology report generation (JSON over REST)",
            version="0.1.0",
        )

    def init_datastore(self) -> Datastore:
        """Local folders list DICOM files too (MONAI Label's default patterns leave ``*.dcm`` out)."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return LocalDatastore(
            self.studies,
            extensions=IMAGE_PATTERNS,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        task = ReportInferTask(self.model_dir, device=self.device, generation=self.generation)
        if not task.is_valid():
            logger.warning("no saved model in %s: the %r model will not be listed", self.model_dir, self.model_name)
        return {self.model_name: task}

    def init_trainers(self) -> dict[str, Any]:
        return {}  # training runs through `monai-r2gen train` / the bundle, not through MONAI Label

    def init_strategies(self) -> dict[str, Any]:
        return {}

    def init_scoring_methods(self) -> dict[str, Any]:
        return {}

    def _study_views(self, study_uid: str) -> list[str] | None:
        """View files of a DICOM study under the local studies folder (index rebuilt when the UID is unknown)."""
        if self.studies.startswith(("http://", "https://")):
            return None
        with self._index_lock:
            if study_uid not in self._study_index:
                studies = collect_studies([self.studies], on_error="skip")
                self._study_index = {s.study_instance_uid: s.paths for s in studies if s.ok and s.study_instance_uid}
            return self._study_index.get(study_uid)

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's infer, plus study ids: a Study Instance UID is replaced by the study's view files."""
        image = request.get("image")
        if isinstance(image, str) and image and not os.path.exists(image):
            store = datastore if datastore else self.datastore()
            if not store.get_image_uri(image):
                views = self._study_views(image)
                if not views:
                    raise HTTPException(status_code=404, detail=f"no image or DICOM study with id {image!r}")
                request = {**request, "image": views[0], "views": views}
        return super().infer(request, datastore)
