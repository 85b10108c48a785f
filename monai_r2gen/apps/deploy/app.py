"""MONAI Deploy application: chest radiograph study (DICOM) -> report -> DICOM Basic Text SR + JSON.

Run it (in the MONAI Deploy venv, see ``scripts/setup_deploy_venv.sh``)::

    python -m monai_r2gen.apps.deploy.app -i STUDY_FOLDER -m MODEL_DIR -o OUTPUT_FOLDER

or with ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_MODEL_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` set (as in the packaged container).

Operators: ``DICOMDataLoaderOperator`` (every study in the folder) -> ``DICOMSeriesSelectorOperator`` (all CR / DX
series of each study) -> ``ReportGenerationOperator`` (views ordered frontal first, model loaded once, the shared
inference path) -> ``ReportSRWriterOperator`` (the SDK's Basic Text SR writer, one SR and one JSON per study).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_utils import EquipmentInfo, ModelInfo

from monai_r2gen.apps.deploy.operators import ReportGenerationOperator, ReportSRWriterOperator

__all__ = ["R2GenReportApp", "SELECTION_RULES", "main"]

logger = logging.getLogger(__name__)

VERSION = "0.1.0"

SELECTION_RULES = json.dumps(
    {"selections": [{"name": "Chest radiographs", "conditions": {"Modality": "(?i)^(CR|DX)$"}}]}
)
"""Every CR / DX series of a study (frontal and lateral views may sit in separate series)."""


class R2GenReportApp(Application):
    """Writes a radiology report draft, as a DICOM Basic Text SR referencing the study, for each radiograph study."""

    name = "monai-r2gen-report"
    description = "Chest X-ray radiology report generation: DICOM CR/DX study in, DICOM Basic Text SR out."
    version = VERSION

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        input_folder = Path(context.input_path)
        output_folder = Path(context.output_path)
        model_path = Path(context.model_path)
        logger.info("input %s, model %s, output %s", input_folder, model_path, output_folder)

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=input_folder, name="study_loader")
        selector = DICOMSeriesSelectorOperator(self, rules=SELECTION_RULES, all_matched=True, name="cxr_selector")
        reporter = ReportGenerationOperator(self, model_path=model_path, name="report_generator")
        writer = ReportSRWriterOperator(
            self,
            output_folder=output_folder,
            model_info=ModelInfo(creator="monai-r2gen"),
            equipment_info=EquipmentInfo(
                manufacturer="monai-r2gen", manufacturer_model="monai-r2gen report app", software_version_number=VERSION
            ),  # fmt: skip
            copy_tags=True,
            name="sr_writer",
        )
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, reporter, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(selector, writer, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(reporter, writer, {("results", "results")})


def main() -> None:
    """Run the application with the command line / environment given to the process."""
    R2GenReportApp().run()


if __name__ == "__main__":
    main()
