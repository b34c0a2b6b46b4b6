"""Streamlit glue shared by app.py and the pages: cached model loading, the checkpoint picker, banners.

Everything that computes lives in `dprotonet_core.review`; this module only binds it to Streamlit's caches,
session state and widgets. It lives beside app.py, not in the library, so `dprotonet_core` never imports
Streamlit. Per-user state lives in `st.session_state` under the keys below.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dprotonet_core import review
from dprotonet_core.checkpoint import Checkpoint


def keep_uploads_in_memory() -> int:
    """Uploads stay in memory end to end: Streamlit's web server (Starlette) spools every multipart part larger than
    1 MB to a temporary file (a 2 MB DICOM left the patient's name and MRN in a deleted file under the temp
    folder, readable through /proc/PID/fd, its blocks on disk). Raising Starlette's spooling limit to the upload
    limit (plus the multipart framing) keeps every upload in a memory buffer; Streamlit refuses bodies above
    server.maxUploadSize before they are parsed. A temp folder on a RAM-backed filesystem was measured too: the
    file then lives in tmpfs (swappable) and the process still holds it, so it is not the fix
    (tests/integration/test_http.py scans the server's open files while it receives an upload).

    Runs when app.py imports this module, i.e. in the server process before the first page (and so the first
    upload widget) is served. Returns the limit now in force (0 if the server is not Starlette)."""
    try:
        from starlette.formparsers import MultiPartParser
    except ImportError:  # another web server: nothing of ours to set
        return 0
    limit = (review.MAX_UPLOAD_MB + 1) * 1024 * 1024
    if MultiPartParser.spool_max_size < limit:
        MultiPartParser.spool_max_size = limit
    return MultiPartParser.spool_max_size


keep_uploads_in_memory()

CHECKPOINT_KEY = "checkpoint_path"
PICKER_KEY = "checkpoint_picker"
ROUTED_KEY = "routed_images"  # image hash -> (checkpoint path, notice or None): each image is routed once


def _pending_image() -> bytes | None:
    """The bytes of the image the review page is about to show (upload first, else the bundled sample)."""
    upload = st.session_state.get("upload")
    if upload is not None:
        return upload.getvalue()
    sample = st.session_state.get("sample")
    return sample.path.read_bytes() if sample is not None else None


def _route_pending_image(valid: list[review.CheckpointEntry], paths: list[str]) -> None:
    """Before the picker is drawn: when the pending image does not fit the chosen checkpoint and another listed
    one fits, pick that one (with a one-line notice for the page). Each image is routed once, so a user who
    then picks another model keeps it. The decoded image is kept for the page (decoded once)."""
    data = _pending_image()
    if data is None:
        return
    image_hash = review.file_hash(data)
    routed = st.session_state.setdefault(ROUTED_KEY, {})
    if image_hash in routed:
        return
    if st.session_state.get("loaded_hash") != image_hash:
        try:
            st.session_state["loaded"] = review.read_upload(data)
        except review.ReviewError:
            return  # the page shows the reader's message
        st.session_state["loaded_hash"] = image_hash
    current = st.session_state.get(PICKER_KEY) or st.session_state.get(CHECKPOINT_KEY)
    entry = valid[paths.index(current)] if current in paths else valid[0]
    routing = review.route(st.session_state["loaded"], entry, valid)
    routed[image_hash] = (str(routing.path), routing.notice if routing.switched else None)
    if routing.switched:
        st.session_state[PICKER_KEY] = str(routing.path)


def routed(image_hash: str) -> tuple[str, str | None] | None:
    """(checkpoint path, notice) of the automatic choice made for this image, if any."""
    return st.session_state.get(ROUTED_KEY, {}).get(image_hash)


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def cached_checkpoint(path: str, card_sha: str) -> Checkpoint:
    """One loaded model per checkpoint folder (and model hash) for the whole server; read-only after load."""
    del card_sha  # part of the cache key only: a rebuilt checkpoint is loaded afresh
    return review.load_model(path)


@st.cache_data(ttl=30, show_spinner=False)
def _checkpoint_entries(models_root: str) -> list[review.CheckpointEntry]:
    return review.list_checkpoints(Path(models_root))


def checkpoint_entries() -> list[review.CheckpointEntry]:
    return _checkpoint_entries(str(review.models_dir()))


def sidebar_checkpoint_picker() -> review.CheckpointEntry | None:
    """The sidebar's checkpoint picker with the checkpoint's task, classes and training data.

    Invalid folders are listed with their problem; returns the chosen valid entry or None."""
    entries = checkpoint_entries()
    valid = [e for e in entries if e.valid]
    invalid = [e for e in entries if not e.valid]
    st.sidebar.header("Checkpoint")
    chosen = None
    if valid:
        paths = [str(e.path) for e in valid]
        _route_pending_image(valid, paths)
        current = st.session_state.get(CHECKPOINT_KEY)
        index = paths.index(current) if current in paths else 0
        # a value already in session state is the widget's; a default index beside it would be ignored with a warning
        default = {} if st.session_state.get(PICKER_KEY) in paths else {"index": index}
        picked = st.sidebar.selectbox(
            "Model", paths, format_func=lambda p: valid[paths.index(p)].label, key=PICKER_KEY, **default
        )
        st.session_state[CHECKPOINT_KEY] = picked
        chosen = valid[paths.index(picked)]
        summary = review.checkpoint_summary(chosen.card or {})
        plain = review.plain  # card text is untrusted: shown as text, never rendered as markdown
        st.sidebar.markdown(
            f"**Answering:** {plain(chosen.full_name)}  \n"
            f"**Task:** {plain(summary['task'])}  \n"
            f"**Classes:** {', '.join(plain(c) for c in summary['classes'])}"
        )
        with st.sidebar.expander("Training data and credits"):
            st.markdown(f"**Trained on:** {plain(summary['trained_on'])}")
            if summary["credit"]:
                st.caption(f"Data: {plain(summary['credit'])}")
    else:
        st.session_state.pop(CHECKPOINT_KEY, None)
        st.sidebar.warning(
            f"No usable checkpoint found. Bundled demos: `make checkpoints`; or set {review.MODELS_DIR_ENV} "
            f"to a folder of checkpoints (now: `{review.models_dir()}`)."
        )
    if invalid:
        with st.sidebar.expander(f"Invalid checkpoints ({len(invalid)})"):
            for entry in invalid:
                st.markdown(f"**{review.plain(entry.path.name)}**: {review.plain(entry.problem)}")
    return chosen


def current_checkpoint() -> Checkpoint | None:
    """The loaded checkpoint picked in the sidebar; None (with a message shown) when none can be used."""
    path = st.session_state.get(CHECKPOINT_KEY)
    if not path:
        st.info("Choose a checkpoint in the sidebar to begin.")
        return None
    entry = next((e for e in checkpoint_entries() if str(e.path) == path and e.valid), None)
    if entry is None:
        st.error("The chosen checkpoint is no longer available; choose another in the sidebar.")
        return None
    sha = (entry.card or {}).get("sha256", {}).get("model.safetensors", "")
    try:
        return cached_checkpoint(path, sha)
    except review.ReviewError as exc:
        st.error(str(exc))
        return None


def page_header(title: str, entry: review.CheckpointEntry | None) -> None:
    """Every page: the title, the permanent disclaimer, and the synthetic-data banner where it applies."""
    st.title(title)
    st.caption(f":material/info: {review.DISCLAIMER}")
    if entry is not None and entry.card and entry.card.get("synthetic"):
        st.error(f"**{review.SYNTHETIC_WARNING}**", icon=":material/science:")


def current_entry() -> review.CheckpointEntry | None:
    path = st.session_state.get(CHECKPOINT_KEY)
    return next((e for e in checkpoint_entries() if str(e.path) == path), None)
