"""MONAI Label app of monai-r2gen: a report-generation model served over REST.

Start it (in the MONAI Label venv, see ``scripts/setup_label_venv.sh``)::

    monailabel start_server --app APP_DIR --studies STUDIES_DIR --conf model_dir /path/to/trained/model \
        --host 127.0.0.1 --port 8000

``APP_DIR`` holds this file (``start_server`` creates ``model/``, ``logs/`` and ``bin/`` in it, so use a writable copy).
``STUDIES_DIR`` is a local folder: its top-level DICOM / PNG / JPEG files are the datastore's images (id = file name
without suffix); every DICOM study below it, in any sub-folder, can also be asked for by its Study Instance UID, which
reports on all its views together (frontal first).

``STUDIES`` may also be a DICOMweb root (``--studies http://127.0.0.1:8042/dicom-web``): the datastore lists the CR
and DX series (QIDO-RS), ``image`` is a Series Instance UID or a Study Instance UID (all its CR / DX series), and the
series are downloaded as DICOM files (WADO-RS) into MONAI Label's cache (``MONAI_LABEL_DATASTORE_CACHE_PATH``, else
``~/.cache/monailabel/dicom``); they are not converted to NIfTI, and the dcmqi tools (for DICOM SEG labels, which this
app never writes) are not downloaded. ``MONAI_LABEL_DATASTORE_USERNAME`` / ``_PASSWORD`` give HTTP basic credentials.

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
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask

from monai_r2gen.apps.monailabel.lib.infers.report import GENERATION_PARAMS, ReportInferTask
from monai_r2gen.data.studies import collect_studies

logger = logging.getLogger(__name__)

IMAGE_PATTERNS = ["*.dcm", "*.png", "*.jpg", "*.jpeg"]
RADIOGRAPH_MODALITIES = ("CR", "DX")
_SERIES_UID, _MODALITY = "0020000E", "00080060"  # DICOM JSON tags of QIDO-RS answers


def _json_value(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def _is_url(studies: str) -> bool:
    return studies.startswith(("http://", "https://"))


class RadiographDICOMWebDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore listing the radiograph (CR, DX) series and keeping them as DICOM files."""

    def __init__(self, client: DICOMwebClientX, cache_path: str | None = None) -> None:
        super().__init__(client=client, search_filter={}, cache_path=cache_path, fetch_by_frame=False,
                         convert_to_nifti=False)  # fmt: skip

    def list_images(self) -> list[str]:
        """Series Instance UIDs of the server's CR and DX series (one QIDO-RS query per modality)."""
        found: list[str] = []
        for modality in RADIOGRAPH_MODALITIES:
            for series in self._client.search_for_series(search_filters={"Modality": modality}):
                uid = _json_value(series, _SERIES_UID)
                if uid and uid not in found:
                    found.append(uid)
        return found

    def series_of_study(self, study_uid: str) -> list[str]:
        """Series Instance UIDs of the study's CR and DX series (empty when the server has no such study)."""
        matches = self._client.search_for_series(study_instance_uid=study_uid)
        uids = [_json_value(m, _SERIES_UID) for m in matches
                if (_json_value(m, _MODALITY) or "").upper() in RADIOGRAPH_MODALITIES]  # fmt: skip
        return [uid for uid in dict.fromkeys(uids) if uid]

    def has_series(self, series_uid: str) -> bool:
        """Whether the server holds a series with this UID."""
        matches = self._client.search_for_series(search_filters={"SeriesInstanceUID": series_uid})
        return any(_json_value(m, _SERIES_UID) == series_uid for m in matches)


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
        """Local folders list DICOM files too (MONAI Label's default patterns leave ``*.dcm`` out); a DICOMweb URL
        gives a :class:`RadiographDICOMWebDatastore`."""
        if _is_url(self.studies):
            return self._dicomweb_datastore()
        return LocalDatastore(
            self.studies,
            extensions=IMAGE_PATTERNS,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _dicomweb_datastore(self) -> Datastore:
        """The DICOMweb datastore, built here rather than by MONAI Label, which would download the dcmqi tools from
        GitHub at start and convert every series to NIfTI."""
        from dicomweb_client.session_utils import create_session_from_user_pass

        self.studies = self.studies.rstrip("/")
        user = settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME
        password = settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD
        session = create_session_from_user_pass(user, password) if user and password else None
        client = DICOMwebClientX(url=self.studies, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                                 wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                                 stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)  # fmt: skip
        cache = (settings.MONAI_LABEL_DATASTORE_CACHE_PATH or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH).strip()
        logger.info("DICOMweb datastore %s (CR / DX series, DICOM files cached)", self.studies)
        return RadiographDICOMWebDatastore(client, cache_path=cache or None)

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

    def _remote_study_views(self, store: RadiographDICOMWebDatastore, study_uid: str) -> list[str] | None:
        """View files of a study of the DICOMweb server: its CR / DX series downloaded into the cache."""
        folders = [store.get_image_uri(uid) for uid in store.series_of_study(study_uid)]
        if not folders:
            return None
        studies = collect_studies(folders, on_error="skip")
        usable = [s for s in studies if s.ok and s.study_instance_uid == study_uid]
        return usable[0].paths if usable else None

    def _study_views(self, study_uid: str) -> list[str] | None:
        """View files of a DICOM study under the local studies folder (index rebuilt when the UID is unknown)."""
        if _is_url(self.studies):
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
            if isinstance(store, RadiographDICOMWebDatastore):
                if store.has_series(image):
                    return super().infer(request, datastore)  # MONAI Label downloads the series
                views = self._remote_study_views(store, image)
                if not views:
                    raise HTTPException(status_code=404, detail=f"no CR / DX series or study with UID {image!r}")
                request = {**request, "image": views[0], "views": views}
            elif not store.get_image_uri(image):
                views = self._study_views(image)
                if not views:
                    raise HTTPException(status_code=404, detail=f"no image or DICOM study with id {image!r}")
                request = {**request, "image": views[0], "views": views}
        return super().infer(request, datastore)
