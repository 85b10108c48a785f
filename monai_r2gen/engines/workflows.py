"""The multi-stage training workflow: :class:`ReportTrainingWorkflow`, the bundle's ``training`` run id.

One training stage = one ``SupervisedTrainer`` (plus its ``SupervisedEvaluator`` for validation). Stages run in
order and each starts from the previous stage's output:

- ``stage0``: optional text-only language-model warm-up on the training reports (needed when the LLM starts from
  random weights, as in the embedded default);
- ``stage1``: alignment: LLM frozen, projector trained, encoder trained or frozen (a frozen encoder's tokens are
  cached on disk, see :mod:`monai_r2gen.engines.feature_cache`);
- ``stage2``: fine-tuning: LoRA on the LLM plus the projector (optionally the encoder).

Where the parts live: a stage's settings in :mod:`~monai_r2gen.engines.stage_settings`, its freeze policy (and
R2GenGPT's shallow / delta / deep presets) in :mod:`~monai_r2gen.engines.stages`, its engines in
:mod:`~monai_r2gen.engines.engine_factories` (batch preparer, loss and inferer in
:mod:`~monai_r2gen.engines.batches`), resuming in :mod:`~monai_r2gen.engines.resume`, the hooks a stage attaches in
:mod:`~monai_r2gen.engines.stage_hooks` and :mod:`~monai_r2gen.engines.handlers`. The ``evaluating`` run id is
:class:`~monai_r2gen.engines.evaluation_workflow.ReportEvaluationWorkflow` (also importable from here).

Outputs of a training run (``output_dir``)::

    stages/<name>/checkpoints/   last_*.pt (resume), best.pt (best validation score)
    stages/<name>/trainable.safetensors + stage_complete.json   (stage hand-over)
    stages/<name>/reports/       validation reports (JSONL: id, reference, prediction)
    stages/<name>/tensorboard/   TensorBoard event files
    feature_cache/               frozen-encoder tokens
    <model_dir>                  the final model (RadiologyReportGenerator.save_pretrained)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.handlers import (
    CheckpointLoader,
    CheckpointSaver,
    EarlyStopHandler,
    LrScheduleHandler,
    StatsHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
)
from monai.optimizers import WarmupCosineSchedule
from monai.transforms import CopyItemsd, DeleteItemsd
from monai.utils import IgniteInfo, min_version, optional_import
from monai.utils import set_determinism as set_seed  # seeds python, numpy and torch (a public name of this module)
from torch.utils.data import DataLoader

from monai_r2gen.data.datasets import ReportCollate, ReportDataset, read_manifest
from monai_r2gen.data.finding_attributes import FindingAttributeTargetsd
from monai_r2gen.data.finding_boxes import FindingBoxesd
from monai_r2gen.data.reports import DEFAULT_PROMPT, IMAGE_TOKEN, ReportFindingLabelsd, TokenizeReportd
from monai_r2gen.data.synthetic import generate_dataset
from monai_r2gen.data.transforms import LoadStudyViewsd, RandRadiographAugmentd
from monai_r2gen.engines.batches import GenerateInferer, LossFromOutput, ReportBatchPreparer, _loss_value
from monai_r2gen.engines.engine_factories import create_report_evaluator, create_stage_trainer
from monai_r2gen.engines.evaluation_workflow import ReportEvaluationWorkflow, _findings_file, _is_phantom_findings
from monai_r2gen.engines.feature_cache import CachedTokensd, FeatureCache, encoder_fingerprint
from monai_r2gen.engines.handlers import (
    GradientClipHandler,
    StageCompletion,
    TrainableState,
    is_main_process,
    unwrap_model,
)
from monai_r2gen.engines.progress import attach_progress, resolve_mode
from monai_r2gen.engines.resume import (
    ResumableSampler,
    ResumeCheckpointSaver,
    RNGState,
    _attach_resume_skip,
    _SaverState,
    latest_checkpoint,
)
from monai_r2gen.engines.sharding import ShardedStage
from monai_r2gen.engines.stage_hooks import _FinalValidation, _Handover
from monai_r2gen.engines.stage_settings import (
    DEFAULT_STAGE_DEFAULTS,
    DEFAULT_STAGE_SETTINGS,
    DEFAULT_STAGES,
    StageSettings,
)
from monai_r2gen.engines.stages import apply_stage, get_stage
from monai_r2gen.files import atomic_write_text
from monai_r2gen.flags import as_flag
from monai_r2gen.inference import model_fingerprint
from monai_r2gen.metrics.attributes import load_findings
from monai_r2gen.networks.factory import build_generator, embedded_default_config
from monai_r2gen.networks.model_card import write_model_card

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = [
    "DEFAULT_STAGE_SETTINGS",
    "DEFAULT_STAGE_DEFAULTS",
    "DEFAULT_STAGES",
    "StageSettings",
    "ResumableSampler",
    "ReportBatchPreparer",
    "GenerateInferer",
    "LossFromOutput",
    "set_seed",
    "create_stage_trainer",
    "create_report_evaluator",
    "latest_checkpoint",
    "ReportTrainingWorkflow",
    "ReportEvaluationWorkflow",
]


logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _StagePlan:
    """A stage's lengths and where its resume checkpoints go."""

    epoch_length: int
    total_iterations: int
    save_interval: int
    ckpt_dir: Path


class ReportTrainingWorkflow:
    """Multi-stage training of a :class:`~monai_r2gen.networks.RadiologyReportGenerator`.

    Args:
        network: the generator, or a mapping passed to :func:`monai_r2gen.networks.factory.build_generator` (built
            lazily, after the embedded data set exists, e.g. so that a tiny tokenizer can be trained on its
            reports).
        dataset_dir: folder of the data set (images + annotation file). With ``synthetic`` set and the folder
            empty or missing, the synthetic data set is generated there first.
        annotation_file: manifest (annotation.json / JSONL / CSV); default ``<dataset_dir>/annotation.json``.
        output_dir: run directory (checkpoints, reports, logs, feature cache).
        model_dir: where the final model is saved (``save_pretrained``); default ``<output_dir>/model``.
        stages: list of stage settings (see :data:`DEFAULT_STAGE_SETTINGS`); default :data:`DEFAULT_STAGES`, the
            bundle's recipe (then with :data:`DEFAULT_STAGE_DEFAULTS` under ``stage_defaults``).
        stage_defaults: settings every stage takes unless it sets them itself (the bundle's shared stage block).
        image_size: side of the square the views are resized and padded to (default: the model config's).
        max_views: views per study (default: the model config's).
        max_length: maximum tokenized length, prompt + image tokens + report + EOS (default: the model config's).
        prompt: prompt template with ``<ImageHere>`` (default: the model config's, R2GenGPT's prompt).
        report_style: report cleaning style (``"none"``, ``"iu_xray"``, ``"mimic_cxr"``).
        target: report section to learn (None, "findings", "impression", "findings+impression").
        train_split / val_split: split names in the manifest.
        num_workers: DataLoader workers.
        dataset_cache: ``ReportDataset`` cache of the loaded, tokenized studies ("none", "cache": in memory,
            "persistent": on disk under ``<output_dir>/dataset_cache``); random augmentation still runs every epoch.
        synthetic: mapping of :func:`monai_r2gen.data.synthetic.generate_dataset` arguments for the embedded default
            (None: never generate data).
        device: torch device; default cuda when available, else cpu.
        amp: mixed precision on GPU (``amp_dtype`` "bfloat16" or "float16"); ignored on CPU.
        distributed: wrap the model in DistributedDataParallel (torchrun); ``dist_backend`` "gloo" / "nccl".
        find_unused_parameters: DDP option (True when some trainable parameters get no gradient in a stage).
        seed: random seed (model init, data order, dropout).
        gradient_checkpointing: enable gradient checkpointing in the LLM / encoder when supported.
        tensorboard: write TensorBoard logs.
        progress_bar: force the progress bar (``progress="bar"``; kept for older configs).
        progress: per-stage progress (:func:`monai_r2gen.engines.progress.attach_progress`): ``"auto"`` (a bar on a
            terminal, a few log lines elsewhere), ``"bar"``, ``"log"`` or ``"off"`` (a log line every fifth of an
            epoch).
        tracking: ``"mlflow"`` records parameters, per-stage losses, validation scores and the final model in MLflow
            (:mod:`monai_r2gen.engines.tracking`; needs ``pip install "monai-r2gen[tracking]"``); None: off.
        tracking_uri: the MLflow store: a folder (SQLite inside), ``sqlite:///`` or ``http(s)://`` (default
            ``<output_dir>/mlruns``).
        experiment_name / run_name: MLflow experiment and run (default run name: the output folder's, so a resumed
            training continues the same run).
        feature_cache_dir: cache root; default ``<output_dir>/feature_cache``.
        resume: continue from the last checkpoints / completed stages found in ``output_dir``.
        findings_file: the studies' findings with their attributes (:func:`monai_r2gen.metrics.load_findings`
            layouts), targets of an attribute head; default: ``findings.json`` beside the annotation file when it
            exists (the phantoms write one). Studies it does not list have their attributes read from the report.
    """

    def __init__(
        self,
        network: torch.nn.Module | Mapping[str, Any],
        dataset_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        annotation_file: str | os.PathLike | None = None,
        model_dir: str | os.PathLike | None = None,
        stages: Sequence[Mapping[str, Any]] | None = None,
        stage_defaults: Mapping[str, Any] | None = None,
        image_size: int | None = None,
        max_views: int | None = None,
        max_length: int | None = None,
        prompt: str | None = None,
        report_style: str = "none",
        target: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        num_workers: int = 0,
        dataset_cache: str = "none",
        synthetic: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        distributed: bool = False,
        dist_backend: str | None = None,
        find_unused_parameters: bool = False,
        seed: int = 0,
        gradient_checkpointing: bool = False,
        tensorboard: bool = True,
        progress_bar: bool = False,
        progress: str = "auto",
        tracking: str | None = None,
        tracking_uri: str | os.PathLike | None = None,
        experiment_name: str = "monai-r2gen",
        run_name: str | None = None,
        feature_cache_dir: str | os.PathLike | None = None,
        resume: bool = True,
        findings_file: str | os.PathLike | None = None,
    ) -> None:
        self._network_spec = network
        self.network: torch.nn.Module | None = network if isinstance(network, torch.nn.Module) else None
        self.dataset_dir = Path(dataset_dir)
        self.annotation_file = Path(annotation_file) if annotation_file else self.dataset_dir / "annotation.json"
        self._findings_file = Path(findings_file) if findings_file else None
        self.output_dir = Path(output_dir)
        self.model_dir = Path(model_dir) if model_dir else self.output_dir / "model"
        shared = {**(DEFAULT_STAGE_DEFAULTS if stages is None else {}), **(stage_defaults or {})}
        self.stages = [StageSettings(shared, **s) for s in (stages if stages is not None else DEFAULT_STAGES)]
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.image_size = image_size
        self.max_views = max_views
        self.max_length = max_length
        self.prompt = prompt
        self.report_style = report_style
        self.target = target
        self.train_split = train_split
        self.val_split = val_split
        self.num_workers = int(num_workers)
        self.dataset_cache = dataset_cache
        self.synthetic = dict(synthetic) if synthetic is not None else None
        self.device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.amp = bool(as_flag(amp, "amp")) and self.device.type == "cuda"
        self.amp_kwargs = {"dtype": getattr(torch, amp_dtype)} if self.amp else {}
        self.distributed = bool(as_flag(distributed, "distributed"))
        self.dist_backend = dist_backend
        self.find_unused_parameters = find_unused_parameters
        self.seed = int(seed)
        self.gradient_checkpointing = bool(as_flag(gradient_checkpointing, "gradient_checkpointing"))
        self.tensorboard = bool(as_flag(tensorboard, "tensorboard"))
        self.progress = "bar" if progress_bar else progress
        resolve_mode(self.progress)  # unknown modes are refused before any work
        if tracking not in (None, "none", "mlflow"):
            raise ValueError(f"tracking must be 'none' or 'mlflow', got {tracking!r}")
        self.tracking = None if tracking in (None, "none") else tracking
        self.tracking_uri = tracking_uri or self.output_dir / "mlruns"
        self.experiment_name = experiment_name
        self.run_name = run_name or self.output_dir.resolve().name
        self._tracker: Any = None
        self.feature_cache_dir = Path(feature_cache_dir) if feature_cache_dir else self.output_dir / "feature_cache"
        self.resume = bool(as_flag(resume, "resume"))
        self.history: dict[str, dict[str, Any]] = {}
        self._items: dict[str, list[dict[str, Any]]] = {}
        self._own_process_group = False

    # set-up -----------------------------------------------------------------------------------------------------
    def _setup_distributed(self) -> None:
        if not self.distributed:
            return
        if not torch.distributed.is_initialized():
            backend = self.dist_backend or ("nccl" if self.device.type == "cuda" else "gloo")
            torch.distributed.init_process_group(backend=backend)
            self._own_process_group = True
        if self.device.type == "cuda":
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            self.device = torch.device(f"cuda:{local_rank}")
            torch.cuda.set_device(self.device)

    def _barrier(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def ensure_dataset(self) -> None:
        """Generate the synthetic data set when configured and ``dataset_dir`` is missing or empty.

        In distributed runs rank 0 decides and writes; every rank waits for it.
        """
        if self.synthetic is not None and is_main_process() and not self.annotation_file.exists():
            if self.dataset_dir.exists() and any(self.dataset_dir.iterdir()):
                logger.info("%s is not empty: not generating the synthetic data set", self.dataset_dir)
            else:
                logger.info("generating the synthetic data set in %s", self.dataset_dir)
                generate_dataset(str(self.dataset_dir), **self.synthetic)
        self._barrier()

    def _train_reports(self) -> list[str]:
        """The training split's reports after section selection and cleaning (tokenizer corpus)."""
        dataset = ReportDataset(
            self._manifest_items(self.train_split),
            image_root=str(self.dataset_dir),
            report_style=self.report_style,
            target=self.target,
            check_files=False,
            source=self.annotation_file,
        )
        return [str(dataset[i]["report"]) for i in range(len(dataset))]

    def build_network(self) -> torch.nn.Module:
        """Build the generator from its config mapping (once) and fill data settings the workflow left unset.

        A mapping is read as overrides of :func:`monai_r2gen.networks.factory.embedded_default_config`; a model
        built from scratch gets a tokenizer trained on the training reports.
        """
        if self.network is None:
            config = embedded_default_config(**dict(self._network_spec))  # type: ignore[arg-type]
            corpus = None if (config.tokenizer_path or config.llm_path) else self._train_reports()
            self.network = build_generator(config, corpus=corpus)
        network = unwrap_model(self.network)
        config = getattr(network, "config", None)
        if config is not None:
            self.image_size = self.image_size or getattr(config, "image_size", None) or 224
            self.max_views = self.max_views or getattr(config, "max_views", 2)
            self.max_length = self.max_length or getattr(config, "max_length", 128)
            self.prompt = self.prompt or getattr(config, "prompt_template", None)
        if self.gradient_checkpointing:
            network.enable_gradient_checkpointing()
        self.network.to(self.device)
        return self.network

    @property
    def findings_file(self) -> Path | None:
        """The findings file in use (None: attributes are read from the reports)."""
        return _findings_file(self._findings_file, self.annotation_file)

    def _manifest_items(self, split: str) -> list[dict[str, Any]]:
        if split not in self._items:
            items = read_manifest(self.annotation_file, split=split, image_root=str(self.dataset_dir))
            if self.findings_file is not None:
                findings = load_findings(self.findings_file)
                items = [{**item, "findings": findings[str(item["id"])]} if str(item["id"]) in findings else item
                         for item in items]  # fmt: skip
            self._items[split] = items
        return self._items[split]

    def _load_transform(self) -> Any:
        return LoadStudyViewsd(keys="image", spatial_size=self.image_size, max_views=self.max_views)

    def _tokenize_transform(self) -> Any:
        network = unwrap_model(self.network)
        return TokenizeReportd(
            keys="report",
            tokenizer=network.tokenizer,
            num_image_tokens=network.num_image_tokens,
            prompt_template=self.prompt or DEFAULT_PROMPT,
            max_length=int(self.max_length or 128),
            image_token=getattr(getattr(network, "config", None), "image_token", None) or IMAGE_TOKEN,
        )

    @staticmethod
    def _preset(stage: StageSettings) -> Any:
        return get_stage(stage.preset or stage.name)

    def _trains_encoder(self, stage: StageSettings) -> bool:
        """Whether the stage's freeze policy trains the encoder (in full or with LoRA)."""
        mode = stage.train_encoder if stage.train_encoder is not None else self._preset(stage).encoder
        return mode not in (False, "frozen")

    def _dataset(self, split: str, stage: StageSettings, cache: Any | None, train: bool) -> Any:
        network = unwrap_model(self.network)
        head = getattr(network, "finding_head", None) is not None
        attribute_head = getattr(network, "attribute_head", None)
        token_head = attribute_head is not None and bool(getattr(attribute_head, "reads_tokens", False))
        # a text-only stage loads the images only when they train the encoder through an auxiliary head on it
        with_images = not stage.text_only or (train and (head or token_head) and self._trains_encoder(stage))
        # finding labels: the head's target, and in a text-only stage the finding prompts' content
        with_labels = train and head and (with_images or getattr(network, "finding_prompts", None) is not None)
        # attribute targets: the attribute head's, and the attribute slot prompts' content
        slots = getattr(network, "attribute_slots", None) is not None
        with_attributes = train and attribute_head is not None and (with_images or slots)
        transforms: list[Any] = []
        if not with_images:
            transforms = [DeleteItemsd(keys="image"), self._tokenize_transform()]
        elif cache is not None:
            transforms = [
                CopyItemsd(keys="image", names="image_tokens"),
                CachedTokensd("image_tokens", cache, encoder=network.encoder, load_transform=self._load_transform()),
                DeleteItemsd(keys="image"),
                self._tokenize_transform(),
            ]
        else:
            transforms = [self._load_transform()]
            if train and stage.augment:
                transforms.append(RandRadiographAugmentd(keys="image"))
            transforms.append(self._tokenize_transform())
        if with_labels:
            transforms.append(ReportFindingLabelsd(keys="report"))  # the report is cleaned by ReportDataset
        if with_attributes:
            transforms.append(FindingAttributeTargetsd(keys="findings", report_key="report"))
            if with_images and getattr(network.config, "attribute_box_weight", 0) > 0:
                transforms.append(FindingBoxesd(keys="findings", max_views=self.max_views))
        items = self._manifest_items(split)
        if not train and stage.val_max_studies:
            items = items[: int(stage.val_max_studies)]
        return ReportDataset(
            items,
            image_root=str(self.dataset_dir),
            transform=transforms,
            report_style=self.report_style,
            target=self.target,
            cache=self.dataset_cache if with_images else "none",
            cache_dir=str(self.output_dir / "dataset_cache" / split) if self.dataset_cache == "persistent" else None,
            cache_kwargs={"progress": False} if self.dataset_cache != "none" else None,
            source=self.annotation_file,
        )

    def _collate(self) -> Any:
        tokenizer = unwrap_model(self.network).tokenizer
        return ReportCollate(pad_token_id=tokenizer.pad_token_id)

    def _loader(
        self, dataset: Any, batch_size: int, train: bool, group_by_length: bool = False
    ) -> tuple[DataLoader, ResumableSampler | None]:
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        sampler = None
        if train:
            lengths = [len(str(item.get("report") or "")) for item in dataset.data] if group_by_length else None
            sampler = ResumableSampler(dataset, shuffle=True, seed=self.seed, lengths=lengths, batch_size=batch_size)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self._collate(),
            generator=generator,
            persistent_workers=False,
        )
        return loader, sampler

    def _feature_cache(self, stage: StageSettings) -> Any | None:
        """The stage's feature cache when the encoder is frozen and images are not augmented."""
        if stage.text_only or stage.feature_cache is False or stage.augment:
            return None
        network = unwrap_model(self.network)
        encoder = getattr(network, "encoder", None)
        if encoder is None:
            return None
        frozen = not any(p.requires_grad for p in encoder.parameters())
        if not frozen:
            if stage.feature_cache is True:
                logger.warning(
                    "stage %s: feature cache requested but the encoder is trained: cache disabled", stage.name
                )
            return None

        settings = {"image_size": self.image_size, "max_views": self.max_views, "loader": "LoadStudyViewsd"}
        return FeatureCache(self.feature_cache_dir, encoder_fingerprint(encoder), settings)

    # stages -------------------------------------------------------------------------------------------------------
    def _apply_stage(self, stage: StageSettings) -> dict[str, Any]:
        """Attach LoRA with the stage's settings when it asks for it, then apply the freeze preset."""
        network = unwrap_model(self.network)
        preset = get_stage(stage.preset or stage.name)
        lora = {k: v for k, v in dict(stage.lora or {}).items() if v is not None}
        if preset.llm == "lora" and lora:
            network.enable_llm_lora(**lora)
        encoder_lora = {k: v for k, v in dict(stage.encoder_lora or {}).items() if v is not None}
        if encoder_lora and (preset.encoder == "lora" or stage.train_encoder == "lora"):
            network.enable_encoder_lora(**encoder_lora)
        summary = apply_stage(network, preset, train_encoder=stage.train_encoder, train_projector=stage.train_projector)
        if stage.text_only is None:
            stage["text_only"] = bool(summary.get("text_only", preset.text_only))
        return summary

    def _optimizer(self, stage: StageSettings, module: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters of ``module`` (default: the network)."""
        module = unwrap_model(self.network) if module is None else module
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"stage {stage.name} trains no parameter")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr)

    def stage_dir(self, stage: StageSettings | str) -> Path:
        """Output directory of a stage."""
        return self.output_dir / "stages" / (stage if isinstance(stage, str) else stage.name)

    def _validates(self, stage: StageSettings) -> bool:
        """Whether ``stage`` validates: a text-only stage has no images to write reports for, and an encoder
        warm-up has not trained the LLM yet."""
        return bool(stage.validate) and not stage.text_only and not self._preset(stage).findings_only

    def _fill_feature_cache(self, stage: StageSettings, cache: Any) -> float:
        """Fill the stage's feature cache with the frozen encoder's tokens (rank 0); returns the seconds it took."""
        network = unwrap_model(self.network)
        items = list(self._manifest_items(self.train_split))
        if self._validates(stage):
            val_items = self._manifest_items(self.val_split)
            items += val_items[: int(stage.val_max_studies)] if stage.val_max_studies else val_items
        start = time.perf_counter()
        if is_main_process():
            batch_size = max(1, stage.batch_size)
            cache.fill(items, network.encoder, self._load_transform(), batch_size=batch_size, device=self.device)
        self._barrier()
        return time.perf_counter() - start

    def _training_network(self, network: torch.nn.Module, sharded: ShardedStage | None) -> torch.nn.Module:
        """The module the trainer runs: the sharded copy (FSDP), the model in DDP, or the model itself."""
        if sharded is not None:
            return sharded.module
        if self.distributed:
            return torch.nn.parallel.DistributedDataParallel(
                network,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters,
            )
        return network

    def _validation(
        self, stage: StageSettings, trainer: Any, state: TrainableState, cache: Any, writer: Any
    ) -> tuple[Any, _SaverState | None]:
        """The stage's evaluator with its logging, best-checkpoint saver and early stopping (None when the stage
        does not validate), and the saver's state for the resume checkpoint."""
        if not self._validates(stage):
            return None, None
        stage_dir = self.stage_dir(stage)
        val_ds = self._dataset(self.val_split, stage, cache, train=False)
        val_loader, _ = self._loader(val_ds, int(stage.val_batch_size or stage.batch_size), train=False)
        evaluator = create_report_evaluator(
            network=unwrap_model(self.network),
            data_loader=val_loader,
            device=self.device,
            selection=stage.selection,
            generation=stage.generation,
            report_dir=stage_dir / "reports",
            report_prefix=stage.name,
            trainer=trainer,
            amp=self.amp,
            amp_kwargs=self.amp_kwargs,
        )
        StatsHandler(
            iteration_log=False,
            output_transform=lambda x: None,
            name=None,
            global_epoch_transform=lambda _: trainer.state.iteration,
        ).attach(evaluator)
        # savers are built on every rank (ignite synchronises ranks when they are built); only rank 0 writes
        best_saver = CheckpointSaver(
            save_dir=str(stage_dir / "checkpoints"),
            save_dict={"trainable": state},
            save_key_metric=True,
            key_metric_filename="best.pt",
            key_metric_n_saved=1,
        )
        best_saver.attach(evaluator)
        if stage.early_stop_patience:
            EarlyStopHandler(
                patience=int(stage.early_stop_patience),
                score_function=lambda e: e.state.metrics[stage.selection],
                trainer=trainer,
            ).attach(evaluator)
        if writer is not None:
            TensorBoardStatsHandler(
                summary_writer=writer,
                iteration_log=False,
                output_transform=lambda x: None,
                global_epoch_transform=lambda _: trainer.state.iteration,
            ).attach(evaluator)
        return evaluator, _SaverState(best_saver, evaluator)

    def _attach_logging(
        self, trainer: Any, stage: StageSettings, epoch_length: int, total_iterations: int, writer: Any
    ) -> Any:
        """Progress bar or log lines, TensorBoard and MLflow on the trainer; returns the progress display."""
        progress = attach_progress(trainer, stage.name, total=total_iterations, mode=self.progress)
        if progress is None:  # "off" (or rank > 0): a log line every fifth of an epoch
            log_every = max(1, epoch_length // 5)
            StatsHandler(
                tag_name="train_loss",
                output_transform=_loss_value,
                name=None,
                iteration_log=lambda _, i: i % log_every == 0,
            ).attach(trainer)
        if writer is not None:
            TensorBoardStatsHandler(
                summary_writer=writer, tag_name="train_loss", output_transform=_loss_value, epoch_log=False
            ).attach(trainer)
        return progress

    def _attach_tracking(self, trainer: Any, evaluator: Any, stage: StageSettings) -> None:
        """MLflow tracking of the stage, when on."""
        tracker = self._mlflow()
        if tracker is None:
            return
        tracker.attach(trainer, evaluator, stage=stage.name, stage_params=dict(stage), params={
            "seed": self.seed, "image_size": self.image_size, "max_views": self.max_views,
            "max_length": self.max_length, "report_style": self.report_style, "target": self.target,
            "dataset_dir": str(self.dataset_dir), "network": unwrap_model(self.network).config.to_dict()})  # fmt: skip

    def run_stage(self, stage: StageSettings) -> dict[str, Any]:
        """Train one stage (resuming from its last checkpoint when one exists) and hand its weights over."""
        network = unwrap_model(self.network)
        stage_dir = self.stage_dir(stage)
        ckpt_dir = stage_dir / "checkpoints"
        set_seed(self.seed + self.stages.index(stage))
        self._apply_stage(stage)
        state = TrainableState(network)
        n_trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        logger.info("stage %s: %d trainable parameters in %d tensors", stage.name, n_trainable, len(state.names))

        if self.distributed:  # DDP syncs buffers before each forward, so the last step left each rank its own
            for buffer in network.buffers():  # batch-norm statistics: all ranks take rank 0's
                torch.distributed.broadcast(buffer.data, src=0)
        cache = self._feature_cache(stage)
        fill_seconds = self._fill_feature_cache(stage, cache) if cache is not None else 0.0
        train_ds = self._dataset(self.train_split, stage, cache, train=True)
        train_loader, sampler = self._loader(
            train_ds, stage.batch_size, train=True, group_by_length=bool(stage.group_by_length)
        )
        epoch_length = len(train_loader)
        if stage.max_iterations:
            max_epochs = max(1, math.ceil(int(stage.max_iterations) / epoch_length))
            total_iterations = int(stage.max_iterations)
        else:
            max_epochs = int(stage.max_epochs)
            total_iterations = max_epochs * epoch_length
        sharded = ShardedStage(network) if self.distributed and stage.parallel == "fsdp" else None
        optimizer = self._optimizer(stage, sharded.module if sharded is not None else None)
        # stepped every iteration (also while gradients accumulate): warm-up and length are in iterations
        scheduler = WarmupCosineSchedule(
            optimizer,
            warmup_steps=int(stage.warmup_steps),
            t_total=max(1, total_iterations),
            end_lr=float(stage.end_lr),
        )
        trainer = create_stage_trainer(
            network=self._training_network(network, sharded),
            optimizer=optimizer,
            data_loader=train_loader,
            max_epochs=max_epochs,
            device=self.device,
            text_only=stage.text_only,
            findings_only=self._preset(stage).findings_only,
            teacher_forcing=float(stage.teacher_forcing),
            pack_sequences=bool(stage.pack_sequences),
            accumulation_steps=int(stage.accumulation_steps),
            amp=self.amp,
            amp_kwargs=self.amp_kwargs,
        )
        save_interval = int(stage.checkpoint_interval or epoch_length)
        if sharded is not None:  # the plain model gets the trained weights before any handler reads them
            every = save_interval
            if stage.validate and not stage.val_epoch_level:  # epoch-level validation: the epoch's gather
                every = math.gcd(every, int(stage.val_interval))
            sharded.attach(trainer, every=every)
        save_dict: dict[str, Any] = {
            "trainable": state,
            "optimizer": sharded.optimizer_state(optimizer) if sharded is not None else optimizer,
            "lr_scheduler": scheduler,
            "trainer": trainer,
            "rng": RNGState(),
        }
        writer = None
        if self.tensorboard and is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(stage_dir / "tensorboard"))
        evaluator, saver_state = self._validation(stage, trainer, state, cache, writer)
        if saver_state is not None:
            save_dict["best"] = saver_state

        plan = _StagePlan(epoch_length, total_iterations, save_interval, ckpt_dir)
        progress, completion = self._attach_handlers(trainer, stage, plan, save_dict, state, scheduler, sampler,
                                                     sharded, evaluator, writer)  # fmt: skip

        start = time.perf_counter()
        try:
            trainer.run()
        finally:
            if writer is not None:
                writer.close()
            if progress is not None:
                progress.close()
        self._barrier()  # rank 0 has written the stage's files
        result = _stage_result(trainer, completion, evaluator, cache, time.perf_counter() - start, fill_seconds)
        self.history[stage.name] = result
        logger.info("stage %s finished: %s", stage.name, json.dumps(result, default=str))
        return result

    def _attach_handlers(
        self,
        trainer: Any,
        stage: StageSettings,
        plan: _StagePlan,
        save_dict: dict[str, Any],
        state: TrainableState,
        scheduler: Any,
        sampler: Any,
        sharded: ShardedStage | None,
        evaluator: Any,
        writer: Any,
    ) -> tuple[Any, StageCompletion]:
        """The stage trainer's handlers: resume, learning rate, clipping, logging, validation, tracking, resume
        checkpoints, the iteration budget, the final validation, the hand-over and the completion marker.

        Returns:
            the progress reporter (closed by the caller) and the stage's completion marker.
        """
        # resume first (Events.STARTED handlers run in attach order)
        last = latest_checkpoint(plan.ckpt_dir) if self.resume else None
        if last is not None:
            logger.info("stage %s: resuming from %s", stage.name, last)
            CheckpointLoader(load_path=str(last), load_dict=save_dict, map_location=self.device).attach(trainer)
            if sharded is not None:  # the loaded weights went into the plain model
                trainer.add_event_handler(Events.STARTED, sharded.scatter)
        if sampler is not None:
            _attach_resume_skip(trainer, sampler, stage.batch_size)

        LrScheduleHandler(scheduler, print_lr=False, epoch_level=False).attach(trainer)
        GradientClipHandler(float(stage.grad_clip or 0.0)).attach(trainer)
        progress = self._attach_logging(trainer, stage, plan.epoch_length, plan.total_iterations, writer)
        if evaluator is not None:
            ValidationHandler(
                validator=evaluator, interval=int(stage.val_interval), epoch_level=bool(stage.val_epoch_level)
            ).attach(trainer)
        self._attach_tracking(trainer, evaluator, stage)
        ResumeCheckpointSaver(
            save_dir=str(plan.ckpt_dir),
            save_dict=save_dict,
            file_prefix="last",
            save_final=True,
            save_interval=plan.save_interval,
            epoch_level=False,
            n_saved=1,
        ).attach(trainer)
        if stage.max_iterations:
            trainer.add_event_handler(
                Events.ITERATION_COMPLETED(once=int(stage.max_iterations)), lambda e: e.terminate()
            )
        if evaluator is not None:
            final = _FinalValidation(evaluator, trainer, budget=plan.total_iterations)
            trainer.add_event_handler(Events.COMPLETED, final)
        trainer.add_event_handler(Events.COMPLETED, _Handover(stage, state, plan.ckpt_dir, evaluator))
        completion = StageCompletion(self.stage_dir(stage), stage.name, state, evaluator=evaluator)
        completion.attach(trainer)
        return progress, completion

    def _restore_completed(self, stage: StageSettings) -> None:
        """Re-apply a completed stage's policy and load its hand-over weights (resume after an interruption)."""
        self._apply_stage(stage)
        state = TrainableState(unwrap_model(self.network))
        StageCompletion.load_weights(self.stage_dir(stage), state)
        logger.info("stage %s already complete: loaded %s", stage.name, self.stage_dir(stage))

    def run(self, stages: Sequence[str] | str | None = None) -> dict[str, Any]:
        """Run the stages in order (all enabled ones, or the named subset) and save the final model.

        Stages already completed in ``output_dir`` are not trained again: their policy is re-applied and their
        hand-over weights loaded, so a killed run continues where it stopped. Selecting a later stage alone runs the
        earlier enabled stages' restoration from disk first (they must have completed); the stages after the last
        one selected are left for a later call, and the model saved is the one after the selected stages.

        Returns:
            per-stage summaries (iterations, seconds, best metric, feature-cache counts) and the model directory.
        """
        if isinstance(stages, str):
            stages = [stages]
        wanted = set(stages) if stages else None
        if wanted:
            unknown = wanted - {s.name for s in self.stages}
            if unknown:
                raise ValueError(f"unknown stages {sorted(unknown)}; configured: {[s.name for s in self.stages]}")
        self._setup_distributed()
        set_seed(self.seed)
        try:
            self.ensure_dataset()
            self.build_network()
            self._mlflow()  # a missing mlflow fails before any training
            interrupted = False
            names = [s.name for s in self.stages]
            last = max(names.index(name) for name in wanted) if wanted else len(names) - 1
            for stage in self.stages[: last + 1]:  # the stages after the last one named are not run
                if not stage.enabled:
                    continue
                heads = [getattr(unwrap_model(self.network), h, None) for h in ("finding_head", "attribute_head")]
                if self._preset(stage).findings_only and all(h is None for h in heads):
                    logger.warning("stage %s skipped: it trains the visual path on its auxiliary heads and the model "
                                   "has none (network_config#finding_head and #attribute_head false)",
                                   stage.name)  # fmt: skip
                    continue
                done = self.resume and StageCompletion.is_complete(self.stage_dir(stage))
                if done and (wanted is None or stage.name not in wanted):
                    self._restore_completed(stage)
                    continue
                if wanted is not None and stage.name not in wanted:
                    raise ValueError(f"stage {stage.name} must run before {sorted(wanted)}: it has not completed")
                if done:
                    self._restore_completed(stage)
                    continue
                result = self.run_stage(stage)
                if not result["complete"]:
                    interrupted = True
                    logger.warning("stage %s stopped before its budget: run again to resume", stage.name)
                    break
            if not interrupted and is_main_process():
                self.save_model()
            self._barrier()
            return {"stages": self.history, "model_dir": str(self.model_dir), "complete": not interrupted}
        finally:
            if self._own_process_group and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
                self._own_process_group = False

    def save_model(self) -> None:
        """Save the final model with ``save_pretrained`` and a training summary beside it."""
        network = unwrap_model(self.network)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        network.save_pretrained(str(self.model_dir))

        summary = {
            "stages": self.history,
            "seed": self.seed,
            "image_size": self.image_size,
            "max_views": self.max_views,
            "max_length": self.max_length,
            "stage_settings": {s.name: dict(s) for s in self.stages if s.enabled},
            "dataset": {
                "name": self.dataset_dir.name,
                "dataset_dir": str(self.dataset_dir),
                "annotation_file": str(self.annotation_file),
                "train_split": self.train_split,
                "val_split": self.val_split,
                "train_studies": len(self._manifest_items(self.train_split)),
                "val_studies": len(self._manifest_items(self.val_split)),
                "report_style": self.report_style,
                "target": self.target,
                "synthetic": bool(self.findings_file and _is_phantom_findings(self.findings_file)),
            },
            "model": model_fingerprint(self.model_dir),
        }
        atomic_write_text(self.model_dir / "training_summary.json", json.dumps(summary, indent=2, default=str))
        write_model_card(self.model_dir)  # the card now names the stages and the data set
        logger.info("saved the model to %s", self.model_dir)
        tracker = self._mlflow()
        if tracker is not None:
            tracker.log_model_dir(self.model_dir)
            tracker.close()

    def _mlflow(self) -> Any:
        """The MLflow tracker of this run (rank 0, ``tracking="mlflow"``), created on first use; None otherwise."""
        if self.tracking != "mlflow" or not is_main_process():
            return None
        if self._tracker is None:
            from monai_r2gen.engines.tracking import MLflowTracker

            self._tracker = MLflowTracker(self.tracking_uri, experiment_name=self.experiment_name,
                                          run_name=self.run_name)  # fmt: skip
        return self._tracker


def _stage_result(
    trainer: Any, completion: StageCompletion, evaluator: Any, cache: Any, seconds: float, fill_seconds: float
) -> dict[str, Any]:
    """What a stage's run records: iterations, epochs, time, completion, validation scores and cache use."""
    result: dict[str, Any] = {
        "iterations": int(trainer.state.iteration),
        "epochs": int(trainer.state.epoch),
        "seconds": round(seconds, 2),
        "complete": completion.completed,
    }
    if evaluator is not None:
        result["best_metric"] = float(evaluator.state.best_metric)
        result["last_scores"] = {k: v for k, v in evaluator.state.metrics.items() if isinstance(v, float)}
    if cache is not None:
        result["feature_cache"] = {
            "hits": cache.hits,
            "misses": cache.misses,
            "dir": str(cache.directory),
            "fill_seconds": round(fill_seconds, 2),
        }
    return result
