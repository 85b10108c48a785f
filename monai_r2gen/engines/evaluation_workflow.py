"""The bundle's ``evaluating`` run id: generate the test split's reports with a saved model and score them
(NLG metrics, clinical efficacy, finding attributes, bootstrap intervals)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from torch.utils.data import DataLoader

from monai_r2gen.engines.batches import GenerateInferer, ReportBatchPreparer
from monai_r2gen.engines.handlers import (
    ReportWriter,
    is_main_process,
)
from monai_r2gen.errors import R2GenError
from monai_r2gen.files import atomic_write_text
from monai_r2gen.metrics.report_scores import DEFAULT_CLEAN_STYLE
from monai_r2gen.networks.model_card import write_model_card

logger = logging.getLogger(__name__)


def _findings_file(given: str | os.PathLike | None, annotation_file: Path) -> Path | None:
    """The findings file given, else ``findings.json`` beside the annotation file when it exists, else None."""
    if given:
        return Path(given)
    default = annotation_file.parent / "findings.json"
    return default if default.is_file() else None


def _is_phantom_findings(path: Path) -> bool:
    """Whether a findings file is the phantom generator's (its layout records how to re-write the reports)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "generator" in data and isinstance(data.get("studies"), dict)


class ReportEvaluationWorkflow:
    """Score a trained model on a split: every NLG and CE score plus the settings used, written as JSON.

    ``<output_dir>/scores.json`` holds ``{"scores": {...}, "per_label": {...}, "settings": {...}}`` (the layout of
    :func:`monai_r2gen.evaluation.evaluate_files`); the generated reports are written beside it as
    ``reports_<split>.jsonl`` (id, reference, prediction). References are the manifest's reports after the same
    section selection and cleaning as in training, never truncated.

    Args:
        model_dir: a directory written by ``RadiologyReportGenerator.save_pretrained``.
        dataset_dir: data set folder.
        output_dir: where ``scores.json`` and ``reports.jsonl`` are written.
        annotation_file: manifest; default ``<dataset_dir>/annotation.json``.
        split: the split to score.
        encoder_path / llm_path: local base weights when the saved model refers to them.
        image_size / max_views: view settings (default: the model config's).
        report_style / target: report settings of the references (use the training ones).
        batch_size: generation batch size.
        generation: ``generate()`` kwargs (num_beams, max_new_tokens, repetition_penalty ...).
        uncertain: CE treatment of uncertain mentions (None: the metrics' default).
        tokenize: NLG tokenization ("simple", "ptb", "none").
        max_studies: score only the first N studies.
        device: torch device.
        findings_file: the studies' findings (:func:`monai_r2gen.metrics.load_findings` layouts); default:
            ``findings.json`` beside the annotation file when it exists. With one, the finding-attribute scores
            (:func:`monai_r2gen.metrics.attribute_scores`: mention recall, side and severity accuracy and their
            priors) are added, and for the phantoms' own file also the paraphrase ceiling
            (:func:`monai_r2gen.evaluation.paraphrase_ceiling`: ``ceiling/BLEU-4`` ..., ``BLEU-4/ceiling``).
        ceiling_seeds: paraphrase seeds of the ceiling (empty: no ceiling).
        clean_style: cleaning of both sides before the NLG scores (the default of every scoring path).
        bootstrap: bootstrap draws of the 95% intervals of every score (``"intervals"`` in ``scores.json``; 0: none).
        seed: seed of the draws.
        nlg_metrics: subset of ``("BLEU", "METEOR", "ROUGE-L", "CIDEr")``; None: all (METEOR needs Java).
        model_card: record the scores in the model folder's card (``README.md``, ``evaluation.json``) when the whole
            split was scored (:func:`monai_r2gen.networks.model_card.write_model_card`).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        dataset_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        annotation_file: str | os.PathLike | None = None,
        split: str = "test",
        encoder_path: str | None = None,
        llm_path: str | None = None,
        image_size: int | None = None,
        max_views: int | None = None,
        report_style: str = "none",
        target: str | None = None,
        batch_size: int = 16,
        generation: Mapping[str, Any] | None = None,
        uncertain: str | None = None,
        tokenize: str = "simple",
        max_studies: int | None = None,
        num_workers: int = 0,
        device: str | torch.device | None = None,
        findings_file: str | os.PathLike | None = None,
        ceiling_seeds: Sequence[int] = (1, 2, 3),
        clean_style: str = DEFAULT_CLEAN_STYLE,
        bootstrap: int = 1000,
        seed: int = 0,
        nlg_metrics: Sequence[str] | None = None,
        model_card: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.dataset_dir = Path(dataset_dir)
        self.output_dir = Path(output_dir)
        self.annotation_file = Path(annotation_file) if annotation_file else self.dataset_dir / "annotation.json"
        self.split = split
        self.encoder_path = encoder_path
        self.llm_path = llm_path
        self.image_size = image_size
        self.max_views = max_views
        self.report_style = report_style
        self.target = target
        self.batch_size = int(batch_size)
        self.generation = dict(generation or {})
        self.uncertain = uncertain
        self.tokenize = tokenize
        self.max_studies = max_studies
        self.num_workers = int(num_workers)
        self.device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.findings_file = _findings_file(findings_file, self.annotation_file)
        self.ceiling_seeds = [int(s) for s in ceiling_seeds]
        self.clean_style = clean_style
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        self.nlg_metrics = None if nlg_metrics is None else list(nlg_metrics)
        self.model_card = bool(model_card)

    def score(self, ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str]) -> dict[str, Any]:
        """The scores of generated reports: :func:`~monai_r2gen.metrics.report_scores.score_reports` (the one
        scoring function of every path) with this workflow's settings, plus, for a phantom findings file, the
        paraphrase ceiling (:func:`monai_r2gen.evaluation.paraphrase_ceiling`: ``ceiling/BLEU-4`` ...,
        ``BLEU-4/ceiling``).

        Args:
            ids: study ids (to look up the findings).
            refs: reference reports (as the data set gives them: ``report_style`` / ``target`` applied).
            hyps: generated reports, same order.
        """
        from monai_r2gen.evaluation import paraphrase_ceiling
        from monai_r2gen.metrics.attributes import load_findings
        from monai_r2gen.metrics.report_scores import score_reports

        truth = None
        if self.findings_file is not None:
            table = load_findings(self.findings_file)
            truth = [table.get(i, []) for i in ids]
        result = score_reports(list(refs), list(hyps), clean_style=self.clean_style, tokenize=self.tokenize,
                               uncertain=self.uncertain or "negative", nlg_metrics=self.nlg_metrics, findings=truth,
                               bootstrap=self.bootstrap, seed=self.seed)  # fmt: skip
        result["settings"]["nlg"]["reference_style"] = self.report_style
        result["settings"]["nlg"]["target"] = self.target
        if self.findings_file is not None:
            result["settings"]["findings"] = str(self.findings_file)
        scores = result["scores"]
        if truth is not None and self.ceiling_seeds and _is_phantom_findings(self.findings_file):
            ceiling = paraphrase_ceiling(self.findings_file, list(ids), list(refs), seeds=self.ceiling_seeds,
                                         tokenize=self.tokenize, clean_style=self.clean_style,
                                         nlg_metrics=("BLEU", "ROUGE-L", "CIDEr"))  # fmt: skip
            scores.update({f"ceiling/{k}": v for k, v in ceiling["mean"].items()})
            result["ceiling"] = {"mean": ceiling["mean"], "seeds": ceiling["seeds"],
                                 "per_seed": {str(k): v for k, v in ceiling["per_seed"].items()}}  # fmt: skip
            if scores.get("ceiling/BLEU-4") and "BLEU-4" in scores:
                scores["BLEU-4/ceiling"] = scores["BLEU-4"] / scores["ceiling/BLEU-4"]
                logger.info("BLEU-4 %.4f; paraphrase ceiling %.4f (ratio %.3f)", scores["BLEU-4"],
                            scores["ceiling/BLEU-4"], scores["BLEU-4/ceiling"])  # fmt: skip
        return result

    def run(self) -> dict[str, Any]:
        """Generate reports for the split, score them and write ``scores.json`` + ``reports.jsonl``."""
        from monai_r2gen.data.datasets import ReportCollate, ReportDataset, read_manifest
        from monai_r2gen.data.transforms import LoadStudyViewsd
        from monai_r2gen.networks.generator import RadiologyReportGenerator

        network = RadiologyReportGenerator.from_pretrained(
            str(self.model_dir), encoder_path=self.encoder_path, llm_path=self.llm_path
        ).to(self.device)
        network.eval()
        self.image_size = int(self.image_size or network.config.image_size or 224)
        self.max_views = int(self.max_views or network.config.max_views)
        items = read_manifest(self.annotation_file, split=self.split, image_root=str(self.dataset_dir))
        if self.max_studies:
            items = items[: int(self.max_studies)]
        dataset = ReportDataset(
            items,
            image_root=str(self.dataset_dir),
            transform=[LoadStudyViewsd(keys="image", spatial_size=self.image_size, max_views=self.max_views)],
            report_style=self.report_style,
            target=self.target,
            source=self.annotation_file,
        )
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=ReportCollate(pad_token_id=network.tokenizer.pad_token_id),
        )
        start = time.perf_counter()
        writer = ReportWriter(self.output_dir, prefix="reports", tag_fn=lambda _: self.split)
        engine = SupervisedEvaluator(
            device=self.device,
            val_data_loader=loader,
            network=network,
            prepare_batch=ReportBatchPreparer(mode="generate"),
            inferer=GenerateInferer(**self.generation),
            val_handlers=[writer],
            decollate=False,
        )
        engine.run()
        refs = [row["reference"] for row in writer.rows]
        hyps = [row["prediction"] for row in writer.rows]
        result = self.score([row["id"] for row in writer.rows], refs, hyps)
        result["settings"].update({
            "model_dir": str(self.model_dir),
            "dataset_dir": str(self.dataset_dir),
            "annotation_file": str(self.annotation_file),
            "split": self.split,
            "image_size": self.image_size,
            "max_views": self.max_views,
            "reports": str(writer.last_path) if writer.last_path else None,
            "generation": {
                k: v
                for k, v in network.generation_settings(**self.generation).items()
                if isinstance(v, (int, float, str, bool, list)) or v is None
            },
            "seconds": round(time.perf_counter() - start, 2),
        })  # fmt: skip
        if is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / "scores.json", json.dumps(result, indent=2))
            logger.info("wrote %s", self.output_dir / "scores.json")
            if self.model_card and not self.max_studies:  # not partial scores
                try:
                    write_model_card(self.model_dir, scores=result)
                except (OSError, R2GenError) as exc:  # e.g. a read-only shared model folder
                    logger.warning("model card of %s not updated (%s)", self.model_dir, exc)
        return result
