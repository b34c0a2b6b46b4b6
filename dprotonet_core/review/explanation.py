"""Explaining one case: MDM for the query, the prototype side stored or computed, a per-session cache, and
explanations precomputed for the bundled samples."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dprotonet_core.checkpoint import Checkpoint, model_digest
from dprotonet_core.config import DEFAULT_MDM_PROFILE
from dprotonet_core.review.case import samples_dir
from dprotonet_core.review.catalogue import checkpoint_id
from dprotonet_core.review.queue import EXPLAINER, Cancelled, QueueFull
from dprotonet_core.review.settings import (
    LOG,
    MAX_CACHED_EXPLANATIONS,
    MDM_PROFILES,
    ReviewError,
    mdm_time_limit_s,
    offered_profiles,
)


@dataclass(frozen=True)
class Explanation:
    """Both mask stacks of one detection node; everything the panes need, no model required."""

    prototype: int
    mask_index: int  # j_x, eq. 12
    prototype_mask_index: int  # j_pt
    query_stack: np.ndarray  # (D, S, S) g(d_i^x) in [0, 1]
    prototype_stack: np.ndarray  # (D, S, S) g(d_i^{x^pt}) from the checkpoint
    profile: str
    iterations: int
    seconds: float
    stopped_by_time: bool = False
    precomputed: bool = False  # read from the samples' stored explanations (explain/store.py)
    query_vectors: tuple[torch.Tensor, ...] = ()  # the D optimised d_i^x (what explain/store.py keeps)
    query_method: str = ""  # how the query stack was made: profile, steps, loss (mdm.method_label)
    prototype_method: str = ""  # how the stored prototype stack was made (the card's prototype_mdm record)
    final_objective: tuple[float, ...] = ()  # eq. 13 per vector at the returned vectors (empty when stored)

    @property
    def depth(self) -> int:
        return int(self.query_stack.shape[0])


CacheKey = tuple[str, str, int, str]


class ExplanationCache:
    """A bounded LRU of explanations keyed by (image key, checkpoint id, prototype, profile).

    One per user session; the lock only guards against a page and a fragment of the same session."""

    def __init__(self, max_entries: int = MAX_CACHED_EXPLANATIONS) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[CacheKey, Explanation] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> Explanation | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: CacheKey, value: Explanation) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def nbytes(self) -> int:
        with self._lock:
            return sum(e.query_stack.nbytes + e.prototype_stack.nbytes for e in self._items.values())


def explanation_key(key_image: str, checkpoint: Checkpoint, prototype: int, profile: str) -> CacheKey:
    """(image hash + window, checkpoint, prototype, MDM profile): what an explanation depends on."""
    return (key_image, checkpoint_id(checkpoint), int(prototype), profile)


def prototype_stack(checkpoint: Checkpoint, prototype: int) -> np.ndarray:
    """The stored prototype-side stack g(d_i^{x^pt}) (eq. 14/16) at the model's input size."""
    return _stored_side(checkpoint, prototype).stack


def _stored_side(checkpoint: Checkpoint, prototype: int):
    """The checkpoint's stored prototype side (never computed here: that would take minutes per prototype)."""
    from dprotonet_core.explain.pair import prototype_side

    try:
        return prototype_side(checkpoint, prototype, compute_missing=False)
    except ValueError:
        raise ReviewError("This checkpoint stores no prototype heatmaps (mask vectors); re-run projection.") from None


ProgressCallback = Callable[[float, str], None]
PreviewCallback = Callable[["Explanation", int, int], None]  # (the explanation so far, step, total steps)
REFINING = "; refining:"  # what a preview's query_method adds to the method: "; refining: step k of n"
PROGRESS_EVERY_S = 0.5  # the progress bar's text at most this often (and at the last step)
PREVIEW_EVERY_S = 1.0  # optimisation between two refining heatmaps, at least (the first one after the first step)


def progress_text(step: int, total: int, seconds: float, steps_timed: int) -> str:
    """'Explaining: step k of n, about s s left': the time left from the pace of the last `steps_timed` steps
    (taking `seconds`); no estimate until 5 steps are timed."""
    text = f"Explaining: step {step} of at most {total}"
    if steps_timed >= 5 and seconds > 0 and step < total:
        left = (total - step) * seconds / steps_timed
        text += f", about {left:.0f} s left" if left < 90 else f", about {left / 60:.0f} min left"
    return text


def explain(
    checkpoint: Checkpoint,
    x: torch.Tensor,
    prototype: int,
    profile: str = DEFAULT_MDM_PROFILE,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    time_limit_s: float | None = None,
    preview: PreviewCallback | None = None,
    owner: str | None = None,
) -> Explanation:
    """MDM on the query (eq. 12-13) for one prototype, plus the stored prototype side (eq. 14).

    `progress(fraction, text)` is called as iterations run; `cancel()` returning True stops the run
    (ReviewError). The run stops at `time_limit_s` and the result says so. `preview(explanation, step, total)`
    gets the explanation as it stands after the first step and then at most every PREVIEW_EVERY_S seconds
    (its query method says "refining: step k of n"), so a page can show the heatmap while it refines. Explanations
    of all sessions run one at a time, first come first served (review/queue.py); a waiting one reports its place
    through `progress` and can be cancelled. `owner` (the session): a newer request of the same owner replaces
    its waiting one; when the queue is full the request is refused at once (ReviewError). `time_limit_s` defaults
    to this server's cap (settings.mdm_time_limit_s); a demo server refuses the 800-step profiles."""
    from dprotonet_core.explain import mdm

    if profile not in MDM_PROFILES:
        raise ReviewError(f"Unknown explanation profile {profile!r}.")
    if profile not in offered_profiles():
        raise ReviewError(f"The {MDM_PROFILES[profile]} profile is turned off on this server (a demo deployment); "
                          "choose a shorter one.")
    time_limit_s = mdm_time_limit_s() if time_limit_s is None else time_limit_s
    cfg = dataclasses.replace(mdm.profile(profile), time_limit=time_limit_s)

    started = [None]  # when the first step ended: the time left is estimated from the steps since
    sent = [float("-inf")]

    def report(step: int, total: int, _loss: float) -> None:
        if progress is None:
            return
        now = time.perf_counter()
        if started[0] is None:
            started[0] = (now, step)
        if step < total and now - sent[0] < PROGRESS_EVERY_S:
            return  # a browser on the same CPU redraws the bar at most this often
        sent[0] = now
        progress(min(1.0, step / max(total, 1)), progress_text(step, total, now - started[0][0], step - started[0][1]))

    from dprotonet_core.explain.pair import explain_pair

    side = _stored_side(checkpoint, prototype)  # before minutes of optimisation: the panes need the stored side
    on_step = None if preview is None else _previewer(checkpoint, prototype, profile, side, preview)

    def waiting(ahead: int) -> None:  # another explanation is running: this one waits its turn (review/queue.py)
        if progress is not None:
            progress(0.0, f"Waiting for the explainer: {ahead} explanation{'s' if ahead != 1 else ''} ahead of this "
                          "one (they run one at a time, each on all cores)")

    try:
        with EXPLAINER.turn(waiting, cancel, owner):
            pair = explain_pair(checkpoint, x[0], prototype, cfg, profile, progress=report, cancel=cancel,
                                compute_missing=False, on_step=on_step, side=side)
    except (mdm.MDMCancelled, Cancelled):
        raise ReviewError("The explanation was cancelled.") from None
    except QueueFull:
        raise ReviewError(f"The explainer is busy: {EXPLAINER.max_waiting} explanations are already waiting, the "
                          "most this server queues. Please try again in a few minutes.") from None
    except ValueError as exc:
        raise ReviewError(f"This checkpoint cannot be explained: {exc}.") from None
    result = pair.query
    return Explanation(
        prototype=prototype,
        mask_index=int(pair.node.mask_index),
        prototype_mask_index=pair.prototype.mask_index,
        query_stack=np.asarray(result.stack, dtype=np.float32),
        prototype_stack=pair.prototype.stack,
        profile=profile,
        iterations=int(result.iterations),
        seconds=float(result.seconds),
        stopped_by_time=bool(result.stopped_by_time),
        query_vectors=tuple(result.vectors),
        query_method=pair.query_method + (" (stopped at the time limit)" if result.stopped_by_time else ""),
        prototype_method=pair.prototype.method,
        final_objective=tuple(float(v) for v in result.final_objective),
    )


def _previewer(checkpoint: Checkpoint, prototype: int, profile: str, side, preview: PreviewCallback):
    """An mdm on_step hook that hands `preview` the explanation so far: after step 1, then every PREVIEW_EVERY_S."""
    from dprotonet_core.explain import mdm

    size = int(checkpoint.model.config.input_size)
    method = mdm.method_label(mdm.runnable(mdm.profile(profile), checkpoint.model.prototypes.device), profile)
    last = [float("-inf")]

    def on_step(step: int, total: int, vectors: list[torch.Tensor]) -> None:
        if step > 1 and time.perf_counter() - last[0] < PREVIEW_EVERY_S:
            return
        with torch.no_grad():
            stack = mdm.mask_stack([v[0] for v in vectors], size)  # one image: vectors are (1, a_i, a_i)
        preview(Explanation(
            prototype=prototype, mask_index=-1, prototype_mask_index=side.mask_index,
            query_stack=np.asarray(stack, dtype=np.float32), prototype_stack=side.stack, profile=profile,
            iterations=step, seconds=0.0, query_method=f"{method}{REFINING} step {step} of {total}",
            prototype_method=side.method,
        ), step, total)
        last[0] = time.perf_counter()  # the interval counts from the end of this preview

    return on_step


def explain_cached(
    cache: ExplanationCache,
    key_image: str,
    checkpoint: Checkpoint,
    x: torch.Tensor,
    prototype: int,
    profile: str = DEFAULT_MDM_PROFILE,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    time_limit_s: float | None = None,
    preview: PreviewCallback | None = None,
    owner: str | None = None,
) -> Explanation:
    """`explain` through the session's cache, then the bundled samples' stored explanations: a hit
    costs no model call (and no preview)."""
    key = explanation_key(key_image, checkpoint, prototype, profile)
    hit = cache.get(key)
    if hit is not None:
        return hit
    value = stored_explanation(checkpoint, x, prototype, profile)
    if value is not None:
        cache.put(key, value)
        return value
    value = explain(checkpoint, x, prototype, profile, progress, cancel, time_limit_s, preview, owner)
    cache.put(key, value)
    LOG.info("explanation: image %s, checkpoint %s, prototype %d, %s profile, %d iterations%s (%.2f s)",
             key_image[:12], key[1], prototype, profile, value.iterations,
             ", stopped by the time limit" if value.stopped_by_time else "", value.seconds)
    return value


def profile_choice_label(name: str, model_default: str) -> str:
    """The MDM picker's entry for a profile: its short label, and which one is this model's default."""
    from dprotonet_core.review.settings import MDM_PROFILES as LABELS

    label = LABELS.get(name, name)
    return f"{label}: this model's default" if name == model_default else label


def stored_explanations_dir(environ: dict[str, str] | None = None) -> Path:
    """Where make-demo stores the samples' precomputed explanations: <samples>/explanations."""
    return samples_dir(environ) / "explanations"


def stored_explanation(checkpoint: Checkpoint, x: torch.Tensor, prototype: int, profile: str) -> Explanation | None:
    """A sample's explanation computed when the demo was built, if it matches exactly (explain/store.py)."""
    from dprotonet_core.explain import mdm, store

    digest = model_digest(checkpoint.card)
    if not digest or profile not in MDM_PROFILES:
        return None
    found = store.load(stored_explanations_dir(), x[0], digest, prototype, profile, mdm.profile(profile))
    if found is None:
        return None
    side = _stored_side(checkpoint, prototype)
    return Explanation(
        prototype=prototype,
        mask_index=found.mask_index,
        prototype_mask_index=side.mask_index,
        query_stack=store.stack(found, int(checkpoint.model.config.input_size)),
        prototype_stack=side.stack,
        profile=profile,
        iterations=found.iterations,
        seconds=found.seconds,
        precomputed=True,
        query_vectors=tuple(found.vectors),
        query_method=mdm.method_label(dataclasses.replace(mdm.profile(profile), iterations=found.iterations), profile)
        + "; computed when the demo was built",
        prototype_method=side.method,
        final_objective=tuple(found.final_objective),
    )
