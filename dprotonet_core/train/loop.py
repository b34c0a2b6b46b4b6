"""The DProtoNet trainer: the schedule of phases (phases.py), eq. 4 (losses.py), multi-image
prototype learning (projection.py), model selection on a validation split carved from the
training data, resumable state, a JSON-lines log, and the final checkpoint with its card.

Programmatic use::

    from dprotonet_core.config import ModelConfig, TrainConfig
    from dprotonet_core.train.loop import TrainOptions, train

    result = train(dataset, "runs/palm", ModelConfig(backbone="small_resnet", input_size=224),
                   TrainConfig(epochs=6), options=TrainOptions(classes=["non-PM", "PM"]))
    result.checkpoint, result.val_accuracy

`dataset` is any torch Dataset of (image (3, S, S) float in [0, 1], label), un-augmented;
the trainer augments the training part itself.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dprotonet_core.checkpoint import load_checkpoint, save_checkpoint
from dprotonet_core.config import LossConfig, ModelConfig, TrainConfig, to_dict
from dprotonet_core.data.datasets import stratified_split
from dprotonet_core.data.registry import train_augmentation
from dprotonet_core.model.dprotonet import (
    BackboneClassifier,
    DProtoNet,
)
from dprotonet_core.train import resume as resume_state
from dprotonet_core.train.data import SubsetView, Transform, attribute_values
from dprotonet_core.train.epochs import (
    SELECTION_KEYS,
    SELECTION_LABELS,
    accuracy,
    recalibrate_batch_norm,
    run_epoch,
    validation_figures,
)
from dprotonet_core.train.last_layer import fit_last_layer, prototype_activations
from dprotonet_core.train.losses import cross_entropy_term
from dprotonet_core.train.phases import joint_phase, last_layer_phase, schedule, warm_phase
from dprotonet_core.train.projection import dataset_ids, dataset_labels, project_prototypes, prototype_records
from dprotonet_core.train.sampling import balanced_sampler, cell_shares, view_label_weights

LOG_FILE = "train_log.jsonl"
_MASK_KEY = "feature_masks"


@dataclass
class TrainOptions:
    """How to run (not what to learn: that is ModelConfig / TrainConfig / LossConfig)."""

    classes: Sequence[str] | None = None  # names, position = label; default: dataset.classes or "class i"
    augment: Transform | None = None  # training augmentation; None: section 4.3's, flips per the dataset's spec
    backbone_weights: str | None = None  # local file; None: random init (lr_backbone_scratch applies)
    device: str | None = None  # None: cuda when available, else cpu
    amp: bool = True  # mixed precision for f_b/f_a on CUDA (ignored on CPU)
    threads: int | None = None  # torch.set_num_threads
    dtype: str = "float32"  # of the saved checkpoint: float32 | float16
    baseline: bool = False  # also train the backbone-only classifier (Table 3)
    resume: bool = False  # continue an interrupted run in the same out_dir
    progress: bool = True  # tqdm bars on stderr
    card: dict = field(default_factory=dict)  # extra card fields: task, training_data, synthetic, ...
    command_line: str | None = None
    stop_after: int | None = None  # run at most this many schedule steps now; `resume` continues


@dataclass
class TrainResult:
    checkpoint: Path | None  # None when the run stopped early (stop_after) and is to be resumed
    val_accuracy: float  # of the saved (selected) model, on the validation split
    selected: dict  # the log entry of the selected state
    history: list[dict]
    baseline_val_accuracy: float | None = None
    card: dict = field(default_factory=dict)
    baseline_model: torch.nn.Module | None = None  # the Table 3 classifier at its selected epoch, if trained


# ------------------------------------------------------------------------------ environment


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and ask for deterministic kernels where torch has them."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def _step_seed(seed: int, step: int) -> int:
    """Each step reseeds from (seed, step), so a resumed run draws what an unbroken one would."""
    return seed * 100_003 + step


# ------------------------------------------------------------------------------ the trainer


class _Run:
    """State of one training run (kept out of module globals)."""

    def __init__(self, dataset, val_dataset, out_dir, model_config, train_config, loss_config, options):
        self.out = Path(out_dir)
        self.model_config, self.cfg, self.loss_cfg, self.opt = model_config, train_config, loss_config, options
        self.device = pick_device(options.device)
        self.amp = bool(options.amp and self.device.type == "cuda")
        labels = dataset_labels(dataset)
        ids = dataset_ids(dataset)
        self.classes = list(options.classes or getattr(dataset, "classes", None) or
                            [f"class {i}" for i in range(max(labels) + 1)])
        if len(self.classes) != model_config.num_classes:
            self.model_config = replace(model_config, num_classes=len(self.classes))
        if val_dataset is None:
            train_idx, val_idx = stratified_split(labels, train_config.val_fraction, train_config.seed)
            self.val = SubsetView(dataset, val_idx, None, labels, ids)
            self.split = "carved here: stratified, val_fraction and seed of train_config"
        else:
            train_idx = list(range(len(labels)))
            self.val = SubsetView(val_dataset, range(len(val_dataset)))
            self.split = "given: the data loader's 'val' split of the training data"
        # No augmentation given: section 4.3's, flipping only if the dataset's name (ImageDataset.name) has a
        # spec that allows it; unnamed data (TensorImages, ...) gets the class-per-folder spec, no flip.
        augment = options.augment or train_augmentation(getattr(dataset, "name", None),
                                                        self.model_config.input_size)
        self.train_plain = SubsetView(dataset, train_idx, None, labels, ids)
        self.train_aug = self.train_plain.with_transform(augment)
        self.augment = augment
        self.labels, self.ids = labels, ids
        self.train_views = attribute_values(self.train_plain, "view")
        self.val_views = attribute_values(self.val, "view")
        if train_config.balanced_sampling not in (None, "view_label"):
            raise ValueError(f"unknown balanced_sampling {train_config.balanced_sampling!r}: use view_label or None")
        if train_config.select_on not in SELECTION_KEYS:
            raise ValueError(f"unknown select_on {train_config.select_on!r}: use {', '.join(SELECTION_KEYS)}")
        self.pretrained = options.backbone_weights is not None
        self.phases = {
            "warm": warm_phase(train_config),
            "joint": joint_phase(train_config, self.pretrained),
            "last_layer": last_layer_phase(train_config),
        }

    def sample_weights(self) -> list[float] | None:
        """The training images' draw probabilities under cfg.balanced_sampling (None: uniform)."""
        if self.cfg.balanced_sampling == "view_label":
            return view_label_weights(self.train_views, self.train_plain.labels)
        return None

    def loader(self, step: int) -> DataLoader:
        generator = torch.Generator().manual_seed(_step_seed(self.cfg.seed, step))
        sampler = None
        if self.cfg.balanced_sampling == "view_label":
            sampler = balanced_sampler(self.train_views, self.train_plain.labels, generator)
        return DataLoader(
            self.train_aug,
            batch_size=self.cfg.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=generator if sampler is None else None,
            num_workers=self.cfg.num_workers,
            drop_last=len(self.train_aug) > self.cfg.batch_size,
            pin_memory=self.device.type == "cuda",
        )


def _log(out: Path, entry: dict) -> None:
    with open(out / LOG_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _fp16_round_trip(model: DProtoNet) -> DProtoNet:
    """A copy whose float tensors went through float16, as loading a float16 checkpoint gives."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for name, tensor in twin.state_dict().items():
            if tensor.is_floating_point() and name != _MASK_KEY:
                tensor.copy_(tensor.half().float())
    return twin


def train(
    dataset: Dataset,
    out_dir: str | Path,
    model_config: ModelConfig,
    train_config: TrainConfig | None = None,
    loss_config: LossConfig | None = None,
    options: TrainOptions | None = None,
    val_dataset: Dataset | None = None,
) -> TrainResult:
    """Train a DProtoNet and write the selected model to `out_dir` as a checkpoint folder.

    `dataset` (and `val_dataset`, when given) yield un-augmented (image (3, S, S) in [0, 1], label).
    Without `val_dataset`, a stratified `train_config.val_fraction` of `dataset` is carved off
    for model selection. Never pass a test set as `val_dataset`.

    Steps follow `phases.schedule(train_config)`. Candidates for selection are the states
    whose prototypes are projected (right after each push and after each last-layer epoch);
    the one with the best validation accuracy is saved. The log is `out_dir/train_log.jsonl`.
    """
    cfg = train_config or TrainConfig()
    loss_cfg = loss_config or LossConfig()
    opts = options or TrainOptions()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    seed_everything(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(dataset, val_dataset, out, model_config, cfg, loss_cfg, opts)
    model = DProtoNet(run.model_config, opts.backbone_weights).to(run.device)
    scaler = torch.amp.GradScaler("cuda") if run.amp else None
    optimizers: dict[str, torch.optim.Optimizer] = {}
    steps = schedule(cfg)
    history: list[dict] = []
    best: dict | None = None
    projection = None  # records/images of the current prototypes once projected
    start = 0

    saved = resume_state.read_state(out) if opts.resume else None
    if saved is not None:
        state, tensors = saved
        start, history, best = state["next_step"], state["history"], state["best"]
        model.load_state_dict(load_checkpoint(resume_state.resume_dir(out) / "last").model.state_dict())
        model.requires_grad_(True)
        for name in state["optimizers"]:
            optimizers[name] = run.phases[name].optimizer(model, cfg.weight_decay)
            saved_state = resume_state.optimizer_state_from_files(name, tensors, state["optimizers"])
            optimizers[name].load_state_dict(saved_state)
        projection = state.get("projection")
    elif (out / LOG_FILE).exists():
        (out / LOG_FILE).unlink()

    last_ckpt = resume_state.resume_dir(out) / "last"
    end = len(steps) if opts.stop_after is None else min(len(steps), start + opts.stop_after)
    for index in range(start, end):
        step = steps[index]
        torch.manual_seed(_step_seed(cfg.seed, index))
        t0 = time.perf_counter()
        entry: dict = {"step": index, "epoch": step.epoch + 1, "phase": step.phase or "push"}
        if step.kind == "push":
            if cfg.recalibrate_bn:
                entry["bn_recalibrated"] = recalibrate_batch_norm(model, run.train_plain, cfg.batch_size, run.device)
            # the network as it stands before its prototypes move (after the batch-norm re-estimate): what the
            # projection itself changes is val_accuracy minus this (cross_validation.push_effects)
            entry["val_accuracy_before_projection"] = accuracy(model, run.val, cfg.batch_size, run.device)
            result = project_prototypes(
                model, run.train_plain, views=cfg.projection_views, augment=run.augment,
                labels=run.train_plain.labels, batch_size=cfg.batch_size, device=run.device,
                generator_seed=_step_seed(cfg.seed, index), distinct=cfg.distinct_sources,
            )
            records = prototype_records(result, run.classes, model.prototype_classes().tolist())
            projection = {"records": [r.__dict__ for r in records], "views": result.views,
                          "distances": result.distances}
            _save_state_checkpoint(model, last_ckpt, run, records, result.images)
            entry["views"] = result.views
        else:
            phase = run.phases[step.phase]
            if step.phase not in optimizers:
                optimizers[step.phase] = phase.optimizer(model, cfg.weight_decay)
            desc = f"epoch {step.epoch + 1}/{cfg.epochs} {step.phase}"
            if step.phase == "last_layer" and cfg.last_layer_fit == "converged":
                acts, labels = prototype_activations(model, run.train_plain, cfg.batch_size, run.device)
                entry.update(fit_last_layer(model, acts, labels, loss_cfg, cfg, run.sample_weights()))
            else:
                entry.update(run_epoch(model, run.loader(index), phase, optimizers[step.phase], loss_cfg,
                                       run.device, scaler, cfg.label_smoothing, desc, opts.progress))
        entry["val_accuracy"] = accuracy(model, run.val, cfg.batch_size, run.device)
        if cfg.select_on != "accuracy":
            entry.update(validation_figures(model, run.val, cfg.batch_size, run.val_views))
        # candidates for selection: states whose prototypes are projected and whose last layer fits them (with
        # last_layer_fit "converged", only after the fit: the push state still has the joint phase's last layer)
        after_push = step.kind == "push" and cfg.last_layer_fit != "converged"
        entry["projected"] = projection is not None and (after_push or step.phase == "last_layer")
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(entry)
        _log(out, entry)
        if opts.progress:
            print(json.dumps(entry), file=sys.stderr)
        if step.kind == "epoch" and projection is not None:
            _save_state_checkpoint(model, last_ckpt, run, _records(projection), _images_of(last_ckpt))
        elif step.kind == "epoch":
            _save_state_checkpoint(model, last_ckpt, run, None, None)
        if entry["projected"] and _better(entry, best, cfg.select_on):
            best = entry
            _save_state_checkpoint(model, resume_state.resume_dir(out) / "best", run,
                                   _records(projection), _images_of(last_ckpt))
        resume_state.write_state(out, {"next_step": index + 1, "history": history, "best": best,
                                       "projection": projection}, optimizers)

    if end < len(steps):
        return TrainResult(None, (best or {}).get("val_accuracy") or 0.0, best or {}, history)
    return _finish(run, out, history, best, projection)


def _better(entry: dict, best: dict | None, select_on: str = "accuracy") -> bool:
    """Strictly better validation accuracy (or ROC AUC with select_on="auc"); without a validation split, the
    latest state wins."""
    key = SELECTION_KEYS[select_on]
    if best is None or entry.get(key) is None or best.get(key) is None:
        return True
    return entry[key] > best[key]


def _records(projection: dict):
    from dprotonet_core.checkpoint import PrototypeRecord

    return [PrototypeRecord.from_dict(r) for r in projection["records"]]


def _images_of(folder: Path):
    import numpy as np
    from PIL import Image

    index = json.loads((folder / "prototypes" / "index.json").read_text())
    images = []
    for record in index:
        with Image.open(folder / "prototypes" / record["image"]) as im:
            images.append(np.asarray(im.convert("RGB")))
    return images


def _save_state_checkpoint(model, folder: Path, run: _Run, records, images) -> None:
    """A resume-state checkpoint folder (same safe format as the final one)."""
    if records is None and (folder / "prototypes").is_dir():
        for path in (folder / "prototypes").iterdir():
            path.unlink()
    save_checkpoint(model, folder, {"classes": run.classes, "resume_state": True}, records, images)


def _finish(run: _Run, out: Path, history: list[dict], best: dict | None, projection) -> TrainResult:
    """Load the selected state, measure it, optionally train the baseline, write the final checkpoint."""
    opts, cfg = run.opt, run.cfg
    selected_dir = resume_state.resume_dir(out) / "best"
    chosen = load_checkpoint(selected_dir)
    model = chosen.model.to(run.device)
    val_acc = accuracy(model, run.val, cfg.batch_size, run.device)
    figures = validation_figures(model, run.val, cfg.batch_size, run.val_views) if cfg.select_on != "accuracy" \
        else {"val_auc": None}
    metrics: dict = {
        "val_accuracy": val_acc,
        **figures,
        "selected_on": SELECTION_LABELS[cfg.select_on],
        "val_images": len(run.val),
        "train_images": len(run.train_plain),
        "measured_on": f"validation split of the training data ({run.split}); never a test set",
        "selected_step": best["step"] if best else None,
        "selected_epoch": best["epoch"] if best else None,
    }
    if cfg.balanced_sampling:
        metrics["training_draws"] = {"sampling": cfg.balanced_sampling,
                                     "cell_shares": cell_shares(run.train_views, run.train_plain.labels,
                                                                run.sample_weights())}
    if len(run.val) == 0:  # nothing to select on or to measure: the run's last state is kept
        metrics.update({"selected_on": "nothing (no validation split): the last state, after the fixed epochs",
                        "measured_on": "no validation split: every training image trained the model"})
    if opts.dtype == "float16":
        fp16_acc = accuracy(_fp16_round_trip(model), run.val, cfg.batch_size, run.device)
        metrics.update({"val_accuracy_fp32": val_acc, "val_accuracy_fp16": fp16_acc,
                        "fp16_accuracy_change": None if val_acc is None else fp16_acc - val_acc})
    baseline = baseline_net = None
    if opts.baseline:
        baseline, baseline_net = train_baseline(run)
        metrics.update({f"baseline_{k}": v for k, v in baseline.items()})
    epoch_seconds = [h["seconds"] for h in history if h["phase"] != "push"]
    card = _card(run, metrics, history, epoch_seconds)
    save_checkpoint(model, out, card, chosen.prototypes, [chosen.prototype_image(i) for i in
                                                           range(len(chosen.prototypes))], dtype=opts.dtype)
    return TrainResult(out, val_acc or 0.0, best or {}, history,
                       baseline["val_accuracy"] if baseline else None, card, baseline_net)


def _card(run: _Run, metrics: dict, history: list[dict], epoch_seconds: list[float]) -> dict:
    opts, cfg, mc = run.opt, run.cfg, run.model_config
    all_labels = run.train_plain.labels + run.val.labels
    counts = {name: all_labels.count(i) for i, name in enumerate(run.classes)}
    card = {
        "classes": run.classes,
        "task": "image classification",
        "backbone": mc.backbone,
        "backbone_weights": Path(opts.backbone_weights).name if opts.backbone_weights else "random initialisation",
        "input_size": mc.input_size,
        "normalisation": {"input": "RGB pixels in [0, 1]; the model subtracts mean and divides by std itself",
                          "mean": list(mc.mean), "std": list(mc.std)},
        "training_data": {
            "images": len(all_labels),
            "class_counts": counts,
            "split": {"validation": run.split, "val_fraction": cfg.val_fraction, "seed": cfg.seed,
                      "train_images": len(run.train_plain), "val_images": len(run.val), "val_ids": run.val.ids},
        },
        "seed": cfg.seed,
        "train_config": to_dict(cfg),
        "loss_config": to_dict(run.loss_cfg),
        "projection": {"views": cfg.projection_views, "augmented": True},
        "metrics": metrics,
        "epoch_seconds": epoch_seconds,
        "device": str(run.device) + (" (amp)" if run.amp else ""),
        "threads": torch.get_num_threads(),
        "command_line": opts.command_line or " ".join(sys.argv),
        "intended_use": "Research on interpretable image classification; not a medical device.",
        "warnings": ["Research software, not a medical device: not for diagnosis or treatment decisions."],
    }
    for key, value in opts.card.items():
        if isinstance(value, dict) and isinstance(card.get(key), dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    return card


# ------------------------------------------------------------------------------ Table 3 baseline


def train_baseline(run: _Run, log: Callable[[dict], None] | None = None) -> tuple[dict, torch.nn.Module]:
    """The backbone-only classifier (f_b, GAP, linear) on the same split, augmentation and number of
    epochs; Adam with f_b at DProtoNet's backbone rate and the linear layer at lr_shaping. Returns
    {"val_accuracy", "epoch", "seconds_per_epoch"} of its best validation epoch, and the classifier with
    that epoch's weights (selected on validation, like DProtoNet's, so the two can be compared on a test set)."""
    cfg = run.cfg
    torch.manual_seed(cfg.seed)
    net = BackboneClassifier(run.model_config, run.opt.backbone_weights).to(run.device)
    lr_b = cfg.lr_backbone if run.pretrained else cfg.lr_backbone_scratch
    optimizer = torch.optim.Adam([
        {"params": net.backbone.parameters(), "lr": lr_b, "weight_decay": cfg.weight_decay},
        {"params": net.fc.parameters(), "lr": cfg.lr_shaping},
    ])
    best = {"val_accuracy": None, "val_auc": None, "epoch": None}
    seconds = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(_step_seed(cfg.seed, epoch))
        net.train()
        bar = tqdm(run.loader(epoch), desc=f"baseline {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not run.opt.progress, file=sys.stderr)
        for x, y in bar:
            x, y = x.to(run.device), y.to(run.device)
            loss = cross_entropy_term(net(x), y, cfg.label_smoothing, run.loss_cfg.class_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if cfg.recalibrate_bn:
            recalibrate_batch_norm(net, run.train_plain, cfg.batch_size, run.device)
        acc = accuracy(net, run.val, cfg.batch_size, run.device)
        figures = validation_figures(net, run.val, cfg.batch_size, run.val_views) if cfg.select_on != "accuracy" \
            else {"val_auc": None}
        seconds.append(round(time.perf_counter() - t0, 3))
        entry = {"phase": "baseline", "epoch": epoch + 1, "val_accuracy": acc, **figures, "seconds": seconds[-1]}
        _log(run.out, entry)
        if log:
            log(entry)
        key = SELECTION_KEYS[cfg.select_on]
        if best.get(key) is None or (entry.get(key) or 0.0) > best[key]:
            best = {"val_accuracy": acc, **figures, "epoch": epoch + 1}
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    best["seconds_per_epoch"] = sum(seconds) / max(len(seconds), 1)
    if cfg.epochs:
        net.load_state_dict(best_state)
    return best, net.eval()
