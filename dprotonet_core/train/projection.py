"""Multi-image prototype learning (paper section 3.3, eq. 9-11).

For a prototype p_j of class k:

1. pick the training image x_i of class k nearest to p_j: min over images of class k and
   over feature masks of s(z_e(x_i), p_j) (ProtoPNet's "push"); its mask argmin is j_pt;
2. make R augmented views x_i^1..x_i^R of it with the training augmentation;
3. eq. 9: e_r = argmin_e ||z_e(x_i^r) - p_j|| in each view;
4. eq. 10/11: p_j <- argmin_p sum_r ||z_{e_r}(x_i^r) - p||^2 = (1/R) sum_r z_{e_r}(x_i^r).

With R = 1 and no augmentation this is exactly single-image projection: p_j becomes
z_{j_pt}(x_i). Everything runs under `torch.inference_mode` with the model in eval mode
(batch-norm statistics frozen); the model's training mode is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from dprotonet_core.model.dprotonet import DProtoNet, similarity_score

Augment = Callable[[torch.Tensor], torch.Tensor]  # (3, S, S) in [0, 1] -> same


@dataclass
class ProjectionResult:
    """What one prototype update found, per prototype (index j = position in the lists)."""

    prototypes: torch.Tensor  # (K, D): the new P
    source_indices: list[int]  # index into the dataset passed in
    source_ids: list[str]  # a stable id of that image (file name where the dataset knows it)
    mask_indices: list[int]  # j_pt: argmin over masks for the ORIGINAL image
    distances: list[float]  # min s before the update (how far p_j was from its source)
    views: int  # R
    images: list[np.ndarray]  # the source images, uint8 (S, S, 3) at model input size


def nearest_feature_vector(z: torch.Tensor, prototype: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: e_r = argmin_e ||z_e(x^r) - p_j||, for every view r at once.

    z: (R, n, D) feature vectors of R views; prototype: (D,). Returns (z_{e_r} (R, D), e_r (R,)).
    """
    s = similarity_score(z, prototype[None])[..., 0]  # (R, n)
    e = s.argmin(dim=1)
    return z[torch.arange(z.shape[0], device=z.device), e], e


def multi_image_prototype(nearest: torch.Tensor) -> torch.Tensor:
    """Eq. 11 (the minimiser of eq. 10): p_j = (1/R) sum_r z_{e_r}(x^r). nearest: (R, D) -> (D,)."""
    return nearest.mean(dim=0)


def dataset_labels(dataset: Dataset) -> list[int]:
    """Labels of a dataset: its `labels`/`targets` attribute when it has one, else by reading it."""
    for name in ("labels", "targets"):
        labels = getattr(dataset, name, None)
        if labels is not None:
            return [int(v) for v in labels]
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


def dataset_ids(dataset: Dataset) -> list[str]:
    """A stable id per item: the dataset's `ids`, or the file names of its `samples`/`paths`, else the index."""
    ids = getattr(dataset, "ids", None)
    if ids is not None:
        return [str(v) for v in ids]
    for name in ("paths", "files", "samples"):
        items = getattr(dataset, name, None)
        if items is not None:
            return [str(v[0] if isinstance(v, tuple) else v).rsplit("/", 1)[-1] for v in items]
    return [str(i) for i in range(len(dataset))]  # type: ignore[arg-type]


def _batches(indices: Sequence[int], size: int):
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def find_nearest_images(
    model: DProtoNet,
    dataset: Dataset,
    labels: Sequence[int],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    distinct: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 1, one pass over the dataset: for every prototype, the nearest image of its class.

    With `distinct`, no two prototypes of a class take the same source image (`distinct_sources`): each keeps
    its m nearest images (m = the class's number of prototypes, so a free one always remains), then
    the closest (prototype, image) pairs are assigned first. Returns (image index (K,), mask index j_pt (K,),
    distance (K,)); -1 where a class has no image.
    """
    classes = model.prototype_classes().to(device)
    k = classes.numel()
    m = int(torch.bincount(classes).max()) if distinct else 1
    best_dist = torch.full((m, k), float("inf"), device=device)
    best_image = torch.full((m, k), -1, dtype=torch.long, device=device)
    best_mask = torch.full((m, k), -1, dtype=torch.long, device=device)
    order = list(range(len(labels)))
    for chunk in _batches(order, batch_size):
        x = torch.stack([dataset[i][0] for i in chunk]).to(device)
        y = torch.tensor([labels[i] for i in chunk], device=device)
        s = model(x).distances.float()  # (B, n, K)
        per_image, mask = s.min(dim=1)  # (B, K)
        own = y[:, None] == classes[None, :]  # only images of the prototype's class count
        per_image = per_image.masked_fill(~own, float("inf"))
        chunk_t = torch.tensor(chunk, device=device)[:, None].expand(-1, k)
        dist_all = torch.cat([best_dist, per_image])  # (m + B, K)
        image_all = torch.cat([best_image, chunk_t])
        mask_all = torch.cat([best_mask, mask])
        keep = dist_all.topk(min(m, dist_all.shape[0]), dim=0, largest=False).indices  # (m, K), nearest first
        best_dist, best_image, best_mask = (t.gather(0, keep) for t in (dist_all, image_all, mask_all))
    if not distinct:
        return best_image[0].cpu(), best_mask[0].cpu(), best_dist[0].cpu()
    return distinct_sources(best_dist.cpu(), best_image.cpu(), best_mask.cpu(), classes.cpu())


def distinct_sources(dist: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, classes: torch.Tensor):
    """Give every prototype one of its candidate images (m, K) so that no two prototypes of a class share one:
    the closest remaining (prototype, image) pair is fixed first. A prototype whose candidates are all taken
    (a class with fewer images than prototypes) keeps its nearest."""
    k = dist.shape[1]
    chosen = torch.full((k,), -1, dtype=torch.long)
    out_dist, out_mask = torch.full((k,), float("inf")), torch.full((k,), -1, dtype=torch.long)
    taken: dict[int, set[int]] = {}
    pairs = sorted((float(dist[r, j]), j, r) for r in range(dist.shape[0]) for j in range(k)
                   if int(image[r, j]) >= 0)
    for d, j, r in pairs:
        used = taken.setdefault(int(classes[j]), set())
        if chosen[j] >= 0 or int(image[r, j]) in used:
            continue
        chosen[j], out_dist[j], out_mask[j] = image[r, j], d, mask[r, j]
        used.add(int(image[r, j]))
    for j in range(k):  # fewer images than prototypes: fall back to the nearest
        if chosen[j] < 0 and int(image[0, j]) >= 0:
            chosen[j], out_dist[j], out_mask[j] = image[0, j], dist[0, j], mask[0, j]
    return chosen, out_mask, out_dist


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def project_prototypes(
    model: DProtoNet,
    dataset: Dataset,
    views: int = 1,
    augment: Augment | None = None,
    labels: Sequence[int] | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    generator_seed: int = 0,
    update: bool = True,
    distinct: bool = False,
) -> ProjectionResult:
    """Multi-image prototype learning (eq. 9-11) over `dataset` (un-augmented (3, S, S) images in [0, 1], label).

    `augment` makes each view (the training augmentation); None means every view is the
    original image, so views=1, augment=None is single-image projection. The R views of a
    source image are batched. With `update` the model's prototypes are overwritten.
    The augmentation draws from torch's global generator, seeded here with `generator_seed`
    and restored afterwards, so a projection is reproducible and does not disturb training.
    """
    if views < 1:
        raise ValueError("views (R) must be at least 1")
    labels = list(labels) if labels is not None else dataset_labels(dataset)
    ids = dataset_ids(dataset)
    was_training = model.training
    model.eval()
    rng_state = torch.get_rng_state()
    torch.manual_seed(generator_seed)
    try:
        with torch.inference_mode():
            image_idx, mask_idx, dist = find_nearest_images(model, dataset, labels, batch_size, device, distinct)
            new = model.prototypes.detach().clone()
            images: list[np.ndarray] = []
            cache: dict[int, torch.Tensor] = {}
            for j in range(new.shape[0]):
                i = int(image_idx[j])
                if i < 0:  # no training image of this class: leave p_j where it is
                    images.append(np.zeros((model.config.input_size,) * 2 + (3,), np.uint8))
                    continue
                original = cache.setdefault(i, dataset[i][0])
                images.append(_to_uint8(original))
                nearest = []
                for chunk in _batches(list(range(views)), batch_size):
                    batch = torch.stack([augment(original) if augment else original for _ in chunk]).to(device)
                    z = model(batch).z.float()
                    nearest.append(nearest_feature_vector(z, new[j].float())[0])
                new[j] = multi_image_prototype(torch.cat(nearest)).to(new.dtype)
            if update:
                model.prototypes.data.copy_(new)
    finally:
        torch.set_rng_state(rng_state)
        model.train(was_training)
    return ProjectionResult(
        prototypes=new,
        source_indices=[int(v) for v in image_idx],
        source_ids=[ids[int(v)] if int(v) >= 0 else "" for v in image_idx],
        mask_indices=[int(v) for v in mask_idx],
        distances=[float(v) for v in dist],
        views=views,
        images=images,
    )


def prototype_records(result: ProjectionResult, class_names: Sequence[str], prototype_classes: Sequence[int]):
    """checkpoint.PrototypeRecord per prototype, ready for save_checkpoint with `result.images`."""
    from dprotonet_core.checkpoint import PrototypeRecord

    return [
        PrototypeRecord(
            index=j,
            class_index=int(c),
            class_name=class_names[int(c)],
            source_id=result.source_ids[j],
            mask_index=result.mask_indices[j],
            views=result.views,
            image=f"proto_{j:03d}.png",
        )
        for j, c in enumerate(prototype_classes)
    ]
