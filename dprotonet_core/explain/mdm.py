"""Multiple Dynamic Masks decoder, MDM (paper section 3.4, eq. 12-14).

For a query x, the detection node is a prototype p_t and the feature mask j_x whose z_j(x)
is nearest to it (eq. 12). D mask vectors d_i of size (5+i) x (5+i), initialised to tau, are
upsampled bilinearly to the input size, g(d_i), and multiply the image in pixel space. Each
vector minimises its own loss (eq. 13 on the query side, eq. 14 on the prototype side):

    L_i = s(z_j(g(d_i) x), target) + eta_i * mean|d_i|,   target = z_jx(x)  or  p_t.

All D vectors (and, for the prototype side, all K prototypes) travel in ONE batch of masked
images per step; the network is frozen (eval mode, no parameter gradients), the total loss is
the sum of the independent per-vector losses, the optimiser is per-element (Adam), and every
vector is projected back to [0, 1] after each step. Because no term couples two vectors, the
batched result equals D separate optimisations (tests/unit/test_mdm.py).

The stack g(d_i), i = 1..D, is what explain/overlay.py turns into the CAM (eq. 15-18); it
needs no further model call.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dprotonet_core.config import DEFAULT_MDM_PROFILE, MDM_PROFILES, PAPER_MDM, MDMConfig  # noqa: F401 - re-exported
from dprotonet_core.explain.mdm_profiles import (  # noqa: F401 - mdm's names, as before the split
    card_default_profile,
    fp32_tail_steps,
    loss_label,
    method_label,
    profile,
)

ProgressFn = Callable[[int, int, float], None]  # (step, total steps, current total loss)
# (step, total steps, the live mask vectors after that step's projection): read them, never modify or keep them
VectorsFn = Callable[[int, int, list[torch.Tensor]], None]
CancelFn = Callable[[], bool]  # returns True to stop


class MDMCancelled(RuntimeError):
    """The cancel hook asked the optimisation to stop; no partial explanation is returned."""


@dataclass
class DetectionNode:
    """Eq. 12: the prototype p_t used as detection node and the feature mask j_x."""

    prototype: int  # t
    mask_index: int  # j_x
    predicted_class: int  # c
    prototype_class: int
    activation: float  # g_pt(x)
    distance: float  # ||z_jx(x) - p_t||^2


@dataclass
class MDMResult:
    """Optimised mask vectors of one image (or of N images, see `optimise_mask_vectors`)."""

    vectors: list[torch.Tensor]  # D tensors (a_i, a_i), or (N, a_i, a_i) for a batch
    stack: np.ndarray  # g(d_i): (D, H, W) float32 in [0, 1], or (N, D, H, W)
    iterations: int
    seconds: float
    converged: bool  # the early stop fired (always False under the paper protocol)
    history: list[float] = field(default_factory=list)  # summed loss per step
    stopped_by_time: bool = False
    # eq. 13 / 14 per vector at the returned vectors: D floats (N lists of D for a batch)
    final_objective: list = field(default_factory=list)


@dataclass
class QueryExplanation:
    node: DetectionNode
    result: MDMResult


def top_prototype(activations, prototype_classes, target_class: int) -> int:
    """p_t of eq. 12: the prototype of class `target_class` with the highest activation g_pj(x) (eq. 2).

    The one place the detection node's prototype is chosen: the explanation, the evaluation's CAMs and the
    app's default row all call this. `activations` and `prototype_classes` are per prototype (tensor, array
    or list)."""
    act = torch.as_tensor(activations, dtype=torch.float64).flatten()
    classes = torch.as_tensor(prototype_classes).flatten()
    own = torch.nonzero(classes == int(target_class)).flatten()
    if own.numel() == 0:
        raise ValueError(f"class {target_class} has no prototype")
    return int(own[act[own].argmax()])


@torch.no_grad()
def detection_node(model: nn.Module, x: torch.Tensor, prototype: int | None = None) -> DetectionNode:
    """Eq. 12: j_x = argmin_j ||z_j(x) - p_t||_2.

    x: (3, H, W) or (1, 3, H, W) in [0, 1]. p_t is, unless `prototype` names another one, the
    prototype of the predicted class c with the highest activation g_pt(x).
    """
    x = x.unsqueeze(0) if x.dim() == 3 else x
    out = model(x)
    predicted = int(out.logits[0].argmax())
    classes = model.prototype_classes()
    if prototype is None:
        prototype = top_prototype(out.activations[0], classes, predicted)
    if not 0 <= prototype < classes.numel():
        raise ValueError(f"prototype {prototype} out of range 0..{classes.numel() - 1}")
    s = out.distances[0, :, prototype]  # (n,) squared distances; argmin is the same as for the norm
    j_x = int(s.argmin())
    return DetectionNode(
        prototype=prototype,
        mask_index=j_x,
        predicted_class=predicted,
        prototype_class=int(classes[prototype]),
        activation=float(out.activations[0, prototype]),
        distance=float(s[j_x]),
    )


# --- mask vectors and g(d_i) ----------------------------------------------------------------


def mask_vector_sizes(cfg: MDMConfig = PAPER_MDM) -> list[tuple[int, int]]:
    """(a_i, b_i) = (base + i, base + i) for i = 1..D; the paper: 6x6 .. 15x15."""
    return [(cfg.base_size + i, cfg.base_size + i) for i in range(1, cfg.num_vectors + 1)]


def init_mask_vectors(cfg: MDMConfig = PAPER_MDM, batch: int | None = None) -> list[torch.Tensor]:
    """d_i initialised to tau (section 3.4), shape (a_i, b_i) or (batch, a_i, b_i)."""
    lead = () if batch is None else (batch,)
    return [torch.full((*lead, a, b), float(cfg.tau)) for a, b in mask_vector_sizes(cfg)]


def upsample_mask_vectors(vectors: Sequence[torch.Tensor], size: tuple[int, int] | int) -> torch.Tensor:
    """g(d_i): each vector bilinearly upsampled to the input size, stacked along dim -3.

    vectors: D tensors (..., a_i, b_i) with the same leading shape. Returns (..., D, H, W).
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    lead = vectors[0].shape[:-2]
    ups = []
    for v in vectors:
        flat = v.reshape(-1, 1, *v.shape[-2:])
        ups.append(F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*lead, *size))
    return torch.stack(ups, dim=-3)


def mask_stack(vectors: Sequence[torch.Tensor], size: tuple[int, int] | int) -> np.ndarray:
    """The (..., D, H, W) float32 numpy stack of g(d_i) (e.g. from a checkpoint's stored vectors)."""
    with torch.no_grad():
        return upsample_mask_vectors([v.detach().float().cpu() for v in vectors], size).numpy().astype(np.float32)


def baseline_image(x: torch.Tensor, kind: str = "black", blur_sigma: float = 10.0) -> torch.Tensor:
    """What a masked-out pixel becomes: black (the paper), the image's channel mean, or a blur."""
    if kind == "black":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x).clone()
    if kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        radius = max(1, int(math.ceil(3 * blur_sigma)))
        kernel = min(2 * radius + 1, 2 * (min(x.shape[-2:]) // 2) - 1)
        return gaussian_blur(x, [kernel, kernel], [blur_sigma, blur_sigma])
    raise ValueError(f"unknown baseline {kind!r}; choose black, mean or blur")


def masked_image(x: torch.Tensor, g: torch.Tensor, baseline: torch.Tensor | None = None) -> torch.Tensor:
    """g(d_i) x in pixel space, before the model's normalisation.

    x: (B, 3, H, W) in [0, 1]; g: (B, 1, H, W) in [0, 1]. With a baseline b the masked image is
    g x + (1 - g) b, which for the black baseline (b = 0) is the paper's g(d_i) x exactly.
    """
    if baseline is None:
        return g * x
    return g * x + (1 - g) * baseline


# --- eq. 13 / 14 ----------------------------------------------------------------------------


def feature_distance(
    z: torch.Tensor, target: torch.Tensor, form: str = "paper", deletion: torch.Tensor | None = None
) -> torch.Tensor:
    """s(z, target) = ||z - target||^2 over the last dim (eq. 1), as the paper prints it (form "paper").

    Form "deletion" (DEVIATION, see MDMConfig.distance) divides by `deletion`, the same distance for the
    fully masked image, s(z(b), target): 0 keeps the feature, 1 is as far as deleting everything.
    """
    s = ((z - target) ** 2).sum(-1)
    if form == "paper":
        return s
    if form == "deletion":
        if deletion is None:
            raise ValueError("the deletion form needs s(z(baseline), target)")
        return s / deletion
    raise ValueError(f"unknown distance form {form!r}; choose paper or deletion")


def deletion_distance(z_baseline: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """s(z_j(b), target): how far the feature moves when the whole image is masked out (g = 0).

    The scale of the deletion form. Floored at 1e-6 ||target||^2 so a feature that ignores the image
    cannot divide by zero."""
    s = ((z_baseline - target) ** 2).sum(-1)
    return s.clamp_min(1e-6 * (target**2).sum(-1).clamp_min(1e-12))


def mask_l1(vector: torch.Tensor) -> torch.Tensor:
    """sum_uv |d_iuv| / (a_i b_i): the sparsity term of eq. 13/14, over the last two dims."""
    return vector.abs().mean(dim=(-2, -1))


def query_loss(
    z_masked: torch.Tensor,
    z_query: torch.Tensor,
    vector: torch.Tensor,
    eta: float,
    form: str = "paper",
    deletion: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 13: L_i^x = s(z_jx(g(d_i^x) x), z_jx(x)) + eta_i * mean|d_i^x|."""
    return feature_distance(z_masked, z_query, form, deletion) + eta * mask_l1(vector)


def prototype_loss(
    z_masked: torch.Tensor,
    prototype: torch.Tensor,
    vector: torch.Tensor,
    eta: float,
    form: str = "paper",
    deletion: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 14: L_i^{x^pt} = s(z_jpt(g(d_i) x^pt), p_t) + eta_i * mean|d_i^{x^pt}|."""
    return feature_distance(z_masked, prototype, form, deletion) + eta * mask_l1(vector)


# --- the optimisation -----------------------------------------------------------------------


def is_channels_last(model: nn.Module) -> bool:
    """True when the model's 4-d weights (its convolutions) are stored channels_last."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


@contextlib.contextmanager
def frozen(model: nn.Module, channels_last: bool = False) -> Iterator[nn.Module]:
    """Eval mode, no parameter gradients (and optionally channels_last) for the duration.

    A model already stored channels_last is left as it is (the app keeps its shared models so, at load, so that
    no request converts a model another request is using); one converted here is converted back after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    convert = channels_last and not is_channels_last(model)
    if convert:
        model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        if convert:
            model.to(memory_format=torch.contiguous_format)
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def network_precision(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """The frozen network's arithmetic during MDM steps: "fp32" (the paper protocol) or "bf16" (autocast: matrix
    products and convolutions in bfloat16, reductions and the loss in float32; see MDMConfig.precision)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; choose fp32 or bf16")


@functools.cache
def fast_bf16(device_type: str = "cpu") -> bool:
    """Whether bfloat16 arithmetic is native on this device (else autocast to bf16 would be emulated, slower than
    float32): CUDA that supports it, or a CPU with AVX512-BF16 or AMX-BF16 that oneDNN can use."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu" or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def runnable(cfg: MDMConfig, device: torch.device | str = "cpu") -> MDMConfig:
    """cfg as it will run on `device`: a bf16 profile runs in float32 where bf16 is not native (fast_bf16), and
    every label made from the returned config says so."""
    if cfg.precision == "bf16" and not fast_bf16(torch.device(device).type):
        return replace(cfg, precision="fp32")
    return cfg


def _make_optimizer(params: list[torch.Tensor], cfg: MDMConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    raise ValueError(f"unknown optimiser {cfg.optimizer!r}; choose adam or sgd")


def _learning_rate(cfg: MDMConfig, step: int) -> float:
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "cosine":
        t = step / max(1, cfg.iterations - 1)
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * t))
    if cfg.lr_schedule == "tail":
        start = cfg.iterations * (1.0 - cfg.lr_tail)  # constant until here, then a cosine down to lr_min at the end
        if step < start:
            return cfg.lr
        t = (step - start) / max(1.0, cfg.iterations - 1 - start)
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(1.0, t)))
    raise ValueError(f"unknown lr schedule {cfg.lr_schedule!r}; choose constant, cosine or tail")


def _optimise_group(
    model: nn.Module,
    images: torch.Tensor,
    mask_indices: torch.Tensor,
    targets: torch.Tensor,
    cfg: MDMConfig,
    progress: ProgressFn | None,
    cancel: CancelFn | None,
    deadline: float | None,
    loss: Callable[..., torch.Tensor],
    on_step: VectorsFn | None = None,
) -> tuple[list[torch.Tensor], int, bool, list[float], bool, torch.Tensor]:
    """Optimise D vectors for each of N images in one batch of N*D masked images per step; `loss` is
    query_loss (eq. 13) or prototype_loss (eq. 14). Returns the final per-vector objective (N, D) too."""
    n, d = images.shape[0], cfg.num_vectors
    size = images.shape[-2:]
    torch.manual_seed(cfg.seed)
    vectors = [v.to(images.device).requires_grad_(True) for v in init_mask_vectors(cfg, batch=n)]
    optimizer = _make_optimizer(vectors, cfg)
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x_rep = images.repeat_interleave(d, dim=0).contiguous(memory_format=memory)  # (N*D, 3, H, W)
    base = None if cfg.baseline == "black" else baseline_image(x_rep, cfg.baseline, cfg.blur_sigma)
    idx_rep = mask_indices.repeat_interleave(d)
    t_nd = targets.unsqueeze(1).expand(n, d, targets.shape[-1])  # the target of each vector: (N, D, Dz)
    scale_nd = None  # s(z_j(b), target) of each vector, the deletion form's scale: (N, D)
    if cfg.distance == "deletion":
        with torch.no_grad():
            blank = baseline_image(images, cfg.baseline, cfg.blur_sigma)  # g = 0 everywhere
            scale_nd = deletion_distance(model.feature_vectors(blank, mask_indices), targets).unsqueeze(1).expand(n, d)
    eta = cfg.effective_eta

    def objective(vectors: list[torch.Tensor], low_precision: bool = True) -> torch.Tensor:
        """eq. 13 (query side) or eq. 14 (prototype side) for each vector: (N, D). The network runs in
        cfg.precision when `low_precision`; the loss itself is always float32."""
        g = upsample_mask_vectors(vectors, size).reshape(n * d, 1, *size)  # (N*D, 1, H, W)
        with network_precision(cfg.precision if low_precision else "fp32", images.device):
            z = model.feature_vectors(masked_image(x_rep, g, base), idx_rep)
        z = z.float().reshape(n, d, -1)  # (N, D, Dz)
        return torch.stack([
            loss(z[:, i], t_nd[:, i], vectors[i], eta, cfg.distance, None if scale_nd is None else scale_nd[:, i])
            for i in range(d)
        ], dim=1)

    history: list[float] = []
    first_fp32_step = cfg.iterations - fp32_tail_steps(cfg)
    window: list[torch.Tensor] = []
    converged = stopped_by_time = False
    steps = 0
    for step in range(cfg.iterations):
        if cancel is not None and cancel():
            raise MDMCancelled(f"MDM cancelled after {step} of {cfg.iterations} iterations")
        if deadline is not None and time.perf_counter() > deadline:
            stopped_by_time = True
            break
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(cfg, step)
        per_vector = objective(vectors, low_precision=step < first_fp32_step)
        total = per_vector.sum()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        with torch.no_grad():
            for v in vectors:
                v.clamp_(0.0, 1.0)  # projection onto [0, 1]
        steps = step + 1
        history.append(float(total.detach()))
        if progress is not None:
            progress(steps, cfg.iterations, history[-1])
        if on_step is not None:
            on_step(steps, cfg.iterations, vectors)
        if cfg.tol > 0:
            window.append(per_vector.detach())
            if len(window) > cfg.patience:
                old = window.pop(0)
                change = (per_vector.detach() - old).abs() / old.abs().clamp_min(1e-12)
                if bool((change < cfg.tol).all()):
                    converged = True
                    break
    with torch.no_grad():  # at the vectors as returned (after the last projection onto [0, 1]), in float32
        final = objective(vectors, low_precision=False).float().cpu()
    return [v.detach() for v in vectors], steps, converged, history, stopped_by_time, final


def optimise_mask_vectors(
    model: nn.Module,
    image: torch.Tensor,
    mask_index: int | torch.Tensor,
    target: torch.Tensor,
    cfg: MDMConfig = PAPER_MDM,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    side: str = "query",
    on_step: VectorsFn | None = None,
) -> MDMResult:
    """Minimise eq. 13 (`side` "query") or eq. 14 ("prototype") for the D mask vectors of one image, all D in
    one batch per step.

    image: (3, H, W) in [0, 1] (or (N, 3, H, W) with N mask indices and N targets: then
    vectors are (N, a_i, a_i), the stack (N, D, H, W), and N*D images go through the network
    per step, in groups of at most cfg.max_batch images). target: z_jx(x) for eq. 13, p_t for
    eq. 14. `cancel()` returning True raises MDMCancelled; cfg.time_limit stops early
    (stopped_by_time=True). The network is frozen for the duration and restored after.
    """
    single = image.dim() == 3
    images = image.unsqueeze(0) if single else image
    cfg = runnable(cfg, images.device)
    n = images.shape[0]
    indices = torch.as_tensor(mask_index, dtype=torch.long).reshape(-1).expand(n).to(images.device)
    targets = target.detach().reshape(n, -1).float().to(images.device)
    start = time.perf_counter()
    deadline = None if cfg.time_limit is None else start + cfg.time_limit
    per_group = max(1, cfg.max_batch // cfg.num_vectors)
    if side not in ("query", "prototype"):
        raise ValueError(f"side must be query or prototype, not {side!r}")
    loss = query_loss if side == "query" else prototype_loss
    parts: list[list[torch.Tensor]] = []
    finals: list[torch.Tensor] = []
    steps, converged, stopped, history = 0, True, False, []
    with frozen(model, cfg.channels_last), torch.enable_grad():
        for lo in range(0, n, per_group):
            sl = slice(lo, lo + per_group)
            vecs, k, conv, hist, by_time, final = _optimise_group(
                model, images[sl].detach(), indices[sl], targets[sl], cfg, progress, cancel, deadline, loss,
                on_step if n <= per_group else None,  # a live view only of a run that is one group
            )
            parts.append(vecs)
            finals.append(final)
            steps, converged, stopped = max(steps, k), converged and conv, stopped or by_time
            history = hist if not history else [a + b for a, b in zip(history, hist)]
    vectors = [torch.cat([p[i] for p in parts], dim=0) for i in range(cfg.num_vectors)]
    if single:
        vectors = [v[0] for v in vectors]
    vectors = [v.cpu() for v in vectors]
    return MDMResult(
        vectors=vectors,
        stack=mask_stack(vectors, tuple(images.shape[-2:])),
        iterations=steps,
        seconds=time.perf_counter() - start,
        converged=converged and cfg.tol > 0,
        history=history,
        stopped_by_time=stopped,
        final_objective=(torch.cat(finals)[0] if single else torch.cat(finals)).tolist(),
    )


# --- the two sides of an explanation ---------------------------------------------------------


def explain_query(
    model: nn.Module,
    x: torch.Tensor,
    prototype: int | None = None,
    cfg: MDMConfig = PAPER_MDM,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    on_step: VectorsFn | None = None,
) -> QueryExplanation:
    """Query side: detection node (eq. 12), then the D vectors d_i^x of eq. 13 for x (3, H, W). `on_step` sees
    the vectors after every step (the app draws the heatmap from them while the optimisation runs)."""
    node = detection_node(model, x, prototype)
    with torch.no_grad():
        z_query = model.feature_vectors(x.unsqueeze(0) if x.dim() == 3 else x, node.mask_index)[0]
    result = optimise_mask_vectors(model, x.reshape(3, *x.shape[-2:]), node.mask_index, z_query, cfg, progress,
                                   cancel, on_step=on_step)
    return QueryExplanation(node=node, result=result)


def explain_prototypes(
    model: nn.Module,
    images: torch.Tensor,
    mask_indices: Sequence[int] | torch.Tensor,
    cfg: MDMConfig = PAPER_MDM,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    prototypes: Sequence[int] | None = None,
) -> MDMResult:
    """Prototype side (eq. 14) for prototypes 0..K-1 (or those listed): images (K, 3, H, W)
    are the x^{p_t}, mask_indices the j_pt. The vectors, D tensors (K, a_i, a_i), are what the
    checkpoint stores as `prototype_mask_vectors`."""
    ids = list(range(images.shape[0])) if prototypes is None else list(prototypes)
    targets = model.prototypes.detach()[ids]
    indices = torch.as_tensor(list(mask_indices) if not torch.is_tensor(mask_indices) else mask_indices)
    return optimise_mask_vectors(model, images, indices.long(), targets, cfg, progress, cancel, side="prototype")


def with_overrides(cfg: MDMConfig, **changes) -> MDMConfig:
    """dataclasses.replace, re-exported so callers need not import dataclasses."""
    return replace(cfg, **changes)
