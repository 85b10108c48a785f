"""What a MONAI engine needs to run the report generator: the batch preparer, the loss read off the model's output and
the inferer that generates reports for validation.

Engine contract: ``prepare_batch`` returns ``(images, references, (), {"input_ids", "attention_mask", "labels",
"view_mask"})`` (plus the finding / attribute targets when the generator has those heads) so MONAI's ``_iteration``
calls ``network(images, **kwargs)`` (``SimpleInferer``) and ``loss_function(output, references)`` returns
``output.loss``. For validation, :class:`GenerateInferer` calls ``network.generate(images, view_mask=...)`` so the
engine's ``pred`` is a list of report strings and ``label`` the reference reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.inferers import Inferer

from monai_r2gen.engines.handlers import unwrap_model

logger = logging.getLogger(__name__)


_ATTRIBUTE_KEYS = ("attribute_presence", "attribute_fields", "attribute_boxes", "attribute_box_views")


class ReportBatchPreparer:
    """``prepare_batch`` for report-generation engines.

    Returns ``(images, references, (), kwargs)`` so that MONAI's ``_iteration`` calls ``network(images, **kwargs)``
    (or ``inferer(images, network, **kwargs)``):

    - ``"train"``: kwargs ``input_ids``, ``attention_mask``, ``labels``, ``view_mask``, and ``finding_labels``
      when the batch holds them (:class:`~monai_r2gen.data.reports.ReportFindingLabelsd`, for the generator's
      finding head);
    - ``"text"``: the same with ``images=None``: the generator hides the image positions from attention, so the LLM
      learns the report tokens after the text prompt alone (stage 0 warm-up); a batch with ``finding_labels`` passes
      them (and its images, if any) with ``text_only=True``: the labels fill the generator's finding prompts and the
      images train the encoder through the finding head;
    - ``"findings"``: images, ``view_mask`` and ``finding_labels`` with ``findings_only=True``: the generator
      trains its finding head and encoder without running the LLM (encoder warm-up);
    - ``"generate"``: kwargs ``view_mask`` only (validation / inference).

    In every mode but ``"generate"``, ``attribute_presence`` and ``attribute_fields`` of the batch (targets of the
    generator's attribute head, :class:`~monai_r2gen.data.finding_attributes.FindingAttributeTargetsd`) are passed
    on. In ``"train"`` mode a batch with ``finding_labels`` or attribute targets also passes ``teacher_forcing`` (when
    above 0): the share of studies whose finding prompts carry their report's labels instead of the head's prediction,
    and whose anchored visual prompts are the attribute target prompts (``GeneratorConfig.attribute_prompts``).

    When the batch holds cached encoder tokens (``tokens_key``, ``(B, V, N, D)``) they are passed as
    ``visual_tokens`` and ``images`` is None.

    Args:
        mode: "train", "text", "findings" or "generate".
        image_key: batch key of the pixel views ``(B, V, C, H, W)``.
        tokens_key: batch key of cached encoder tokens.
        report_key: batch key of the reference reports.
        teacher_forcing: in ``"train"`` mode, the generator's ``teacher_forcing`` (0: off).
        pack_sequences: in ``"train"`` and ``"text"`` modes, the generator packs the batch's attended positions
            into fewer rows before the LLM runs (:mod:`~monai_r2gen.networks.packing`; the same loss).
    """

    def __init__(
        self,
        mode: str = "train",
        image_key: str = "image",
        tokens_key: str = "image_tokens",
        report_key: str = "report",
        teacher_forcing: float = 0.0,
        pack_sequences: bool = False,
    ) -> None:
        if mode not in ("train", "text", "findings", "generate"):
            raise ValueError(f"mode must be 'train', 'text', 'findings' or 'generate', got {mode!r}")
        if not 0.0 <= float(teacher_forcing) <= 1.0:
            raise ValueError(f"teacher_forcing must be in [0, 1], got {teacher_forcing!r}")
        self.teacher_forcing = float(teacher_forcing)
        self.pack_sequences = bool(pack_sequences)
        self.mode = mode
        self.image_key = image_key
        self.tokens_key = tokens_key
        self.report_key = report_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor | None, list[str], tuple, dict[str, Any]]:
        def move(x: Any) -> Any:
            return x.to(device=device, non_blocking=non_blocking, **kwargs) if isinstance(x, torch.Tensor) else x

        references = [str(r) for r in batchdata.get(self.report_key, [])]
        extra: dict[str, Any] = {}
        images = None
        if self.mode != "text":
            if batchdata.get(self.tokens_key) is not None:
                extra["visual_tokens"] = move(torch.as_tensor(batchdata[self.tokens_key]))
            else:
                images = move(torch.as_tensor(batchdata[self.image_key]))
            if batchdata.get("view_mask") is not None:
                extra["view_mask"] = move(batchdata["view_mask"])
        for key in _ATTRIBUTE_KEYS:  # targets of the generator's attribute head (it skips them while frozen)
            if self.mode != "generate" and batchdata.get(key) is not None:
                extra[key] = move(torch.as_tensor(batchdata[key]))
        if self.mode == "findings":
            if batchdata.get("finding_labels") is not None:
                extra["finding_labels"] = move(torch.as_tensor(batchdata["finding_labels"]))
            extra["findings_only"] = True
            return images, references, (), extra
        if self.mode != "generate":
            for key in ("input_ids", "attention_mask", "labels"):
                extra[key] = move(batchdata[key])
            if self.pack_sequences:
                extra["pack_sequences"] = True
        labelled = self.mode != "generate" and batchdata.get("finding_labels") is not None
        if labelled:
            extra["finding_labels"] = move(torch.as_tensor(batchdata["finding_labels"]))
        if self.mode == "text" and (labelled or "attribute_presence" in extra):
            # labels and attributes fill the finding and attribute slot prompts; images (if any) feed the heads only
            extra["text_only"] = True
            if batchdata.get(self.image_key) is not None:
                images = move(torch.as_tensor(batchdata[self.image_key]))
                extra["view_mask"] = move(batchdata["view_mask"])
        elif labelled and self.teacher_forcing > 0:
            extra["teacher_forcing"] = self.teacher_forcing
        if self.mode == "train" and self.teacher_forcing > 0 and "attribute_presence" in extra:
            extra["teacher_forcing"] = self.teacher_forcing  # the attribute target prompts (with or without labels)
        return images, references, (), extra


class GenerateInferer(Inferer):
    """Inferer that writes reports: ``network.generate(inputs, view_mask=..., **generation_kwargs)`` -> list[str]."""

    def __init__(self, **generation_kwargs: Any) -> None:
        super().__init__()
        self.generation_kwargs = dict(generation_kwargs)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> list[str]:
        model = unwrap_model(network)  # type: ignore[arg-type]
        return list(model.generate(inputs, *args, **{**self.generation_kwargs, **kwargs}))


class LossFromOutput:
    """``loss_function`` for ``SupervisedTrainer``: the loss the model computed itself (``output.loss``)."""

    def __call__(self, output: Any, target: Any = None) -> torch.Tensor:
        loss = output["loss"] if isinstance(output, Mapping) else output.loss
        if loss is None:
            raise ValueError("the model returned no loss: were labels passed to forward()?")
        return loss


def _drop_logits(engine: Any) -> None:
    """Free the logits (B x L x vocab) right after the backward pass; only the loss is logged."""
    output = engine.state.output
    if isinstance(output, dict) and "pred" in output:
        output["pred"] = None


def _loss_value(output: Any) -> float:
    return float(output["loss"].item()) if isinstance(output, Mapping) else float("nan")
