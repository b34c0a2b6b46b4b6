"""Review an image (clinicians): upload -> prediction -> "this looks like that" with both MDM heatmaps.

Layout only; computation is in dprotonet_core.review. The display controls and the two panes are one
st.fragment that re-renders from the cached mask stacks without any model call.
"""

import uuid

import streamlit as st

import app_ui as ui
from dprotonet_core import review
from dprotonet_core.data.io import Window

S = st.session_state
MANUAL = "manual"

ui.page_header("Review an image", ui.current_entry())
checkpoint = ui.current_checkpoint()
if checkpoint is None:
    st.stop()
if "explanations" not in S:
    S["explanations"] = review.ExplanationCache()

# ------------------------------------------------------------------------------------------ input
left, right = st.columns([3, 2])
upload = left.file_uploader(
    "Upload an image: DICOM, PNG or JPEG (the format is read from the file itself)",
    key="upload",
    help=f"Up to {review.MAX_UPLOAD_MB} MB and {review.MAX_PIXELS // 1_000_000} megapixels. "
    "Nothing is stored: the image stays in this browser session's memory only.",
)
samples = review.samples_for(review.list_samples(), checkpoint.path)
sample = right.selectbox(
    "... or try a bundled sample",
    samples,
    index=None,
    format_func=lambda s: s.title,
    placeholder="Choose a sample" if samples else "No sample images are bundled yet",
    key="sample",
    disabled=not samples,
)
from_sample = upload is None and sample is not None
if upload is not None:
    data, source = upload.getvalue(), "upload"
elif sample is not None:
    data, source = sample.path.read_bytes(), f"sample: {sample.credit or sample.dataset}"
else:
    st.info("Upload an image above, or choose a sample, to see the model's prediction and its reasons.")
    st.stop()

data_hash = review.file_hash(data)
if S.get("loaded_hash") != data_hash:
    S.pop("loaded", None)
    try:
        S["loaded"] = review.read_upload(data)
    except review.ReviewError as exc:
        S.pop("loaded_hash", None)
        st.error(str(exc), icon=":material/block:")
        st.stop()
    S["loaded_hash"] = data_hash
loaded = S["loaded"]
if source != "upload":
    st.caption(f"Sample image, {source}.")

# ------------------------------------------------------------------------- is this the right model
earlier = ui.routed(data_hash)  # the sidebar routed the image before picking the checkpoint
if earlier is not None and earlier[1] and earlier[0] == str(checkpoint.path):
    st.info(review.plain(earlier[1]), icon=":material/swap_horiz:")
fit = review.task_fit(loaded, checkpoint.card.get("accepts"))
if not fit.fits:
    st.error(f"**This image is not what this model was made for:** {review.plain(fit.reason)}. Its answer would "
             "mean nothing.",
             icon=":material/report:")
    if not st.toggle("Show the model's answer anyway (not valid for this image)", key=f"force:{data_hash}"):
        st.stop()

# -------------------------------------------------------------------------------- sidebar: image
window: Window | None = None
presets = review.window_presets(loaded)
with st.sidebar:
    if presets:
        st.header("DICOM window")
        names = [*presets, MANUAL]
        preset = st.selectbox("Preset", names, key="window_preset", format_func=lambda n: presets[n].label or n
                              if n in presets else "manual (centre / width)")
        base = presets.get(preset) or loaded.window or next(iter(presets.values()))
        c1, c2 = st.columns(2)
        center = c1.number_input("Centre", value=float(base.center), disabled=preset != MANUAL, key=f"win_c:{preset}")
        width = c2.number_input("Width", value=float(base.width), min_value=1.0, disabled=preset != MANUAL,
                                key=f"win_w:{preset}")
        window = Window(center, width, MANUAL) if preset == MANUAL else presets[preset]
    st.header("Image information")
    st.caption("De-identified: technical fields only, never names, IDs or dates.")
    st.table(review.metadata_rows(loaded))
    for notice in loaded.notices:
        st.warning(notice)
    st.header("Explanation")
    offered = review.offered_profiles()  # a demo server does not run the 800-step profiles
    model_default = review.card_default_profile(checkpoint.card)
    model_default = model_default if model_default in offered else offered[0]
    if S.get("mdm_profile_of") != str(checkpoint.path) or S.get("mdm_profile") not in offered:
        S["mdm_profile"], S["mdm_profile_of"] = model_default, str(checkpoint.path)  # each model's own default
    profile = st.selectbox("MDM detail", offered,
                           format_func=lambda name: review.profile_choice_label(name, model_default),
                           key="mdm_profile", help=review.MDM_PROFILE_HELP)

shown = review.apply_window(loaded, window)
key = review.image_key(data_hash, window)

# ------------------------------------------------------------------------------------- prediction
try:
    case = review.cached_case(S, data_hash, window, checkpoint, shown)
except review.ReviewError as exc:  # e.g. a model whose scores are not finite: one clear line, no answer shown
    st.error(str(exc), icon=":material/block:")
    st.stop()
prediction = case.prediction
probability = review.probability(prediction) if checkpoint.decision_threshold is None else prediction.probabilities[1]
invalid = "" if case.fit.fits else "NOT VALID FOR THIS IMAGE: "
# class names and the threshold's record come from the card: shown as text, never rendered as markdown
if case.ood.flagged:  # the warning first, the answer under it in grey, without a confident bar
    st.warning(f"**{review.plain(review.ood_warning(checkpoint))}** Out-of-distribution score "
               f"{case.ood.score:.3g} against a threshold of {case.ood.threshold:.3g}.", icon=":material/warning:")
    st.markdown(f"#### :gray[{invalid}Answer for an image unlike its training images: "
                f"{review.plain(review.prediction_headline(prediction, checkpoint))}]")
    st.caption(review.plain(review.probability_text(prediction, checkpoint.classes)))
else:
    st.subheader(invalid + review.plain(review.prediction_headline(prediction, checkpoint)))
    st.progress(probability, text=review.plain(review.probability_text(prediction, checkpoint.classes)))
st.caption(review.plain(review.decision_text(checkpoint)))

st.markdown("**Why: this looks like that.** The prototypes that add most to the predicted class's score.")
st.dataframe(review.summarise_rows(prediction, checkpoint), hide_index=True, width="stretch")
st.caption("Similarity g: how closely part of your image matches the prototype. Weight w: how much that "
           "prototype counts for the predicted class. Share of score: w·g as a part of the class's total score; "
           "negative values count against the prediction.")
choices = review.prototype_choices(prediction)
prototype = st.radio(
    "Explain with prototype",
    choices,
    format_func=lambda j: review.prototype_label(checkpoint, prediction, j),
    horizontal=True,
    key=f"explain_prototype:{key}",
)

# ----------------------------------------------------------------------------------- explanation
truth = review.display_boxes(sample.boxes, (loaded.height, loaded.width)) if from_sample else []
explanation = S["explanations"].get(review.explanation_key(key, checkpoint, prototype, profile))
if explanation is None:
    bar = st.progress(0.0, text="Explaining: finding the regions the model used...")
    live = st.empty()
    slots: dict = {}  # the refining view's query pane and caption, once the first preview has laid them out

    def show_refining(partial: review.Explanation, step: int, total: int) -> None:
        """The heatmap as it stands, refined in place while the optimisation runs (no extra model call): plain
        images, cheap for the browser, which shares the CPU with the optimisation on a one-machine deployment;
        the prototype pane, which does not change meanwhile, is sent once."""
        view = review.render_refining(case, checkpoint, partial, review.settings_from(S), step, total,
                                      with_prototype=not slots)
        if not slots:
            with live.container():
                left, right = st.columns(2)
                slots["query"] = left.empty()
                right.image(view.prototype, caption=view.titles[1], width="stretch")
                slots["caption"] = st.empty()
        slots["query"].image(view.query, caption=view.titles[0], width="stretch")
        slots["caption"].caption(view.caption)

    try:
        explanation = review.explain_cached(
            S["explanations"], key, checkpoint, case.x, prototype, profile,
            progress=lambda fraction, text: bar.progress(fraction, text=text), preview=show_refining,
            owner=S.setdefault("explainer_owner", uuid.uuid4().hex),  # one waiting explanation per session
        )
    except review.ReviewError as exc:
        st.error(str(exc))
        st.stop()
    bar.empty()
    live.empty()


@st.fragment
def panes(explanation: review.Explanation) -> None:
    """Display controls and both panes: re-rendered from the cached mask stacks, no model call."""
    defaults = review.default_settings()
    c = st.columns([3, 2, 2, 3, 2])
    gamma = c[0].slider("Threshold gamma", 0.0, float(explanation.depth), defaults.gamma, 0.5, key="gamma",
                        help="Eq. 15: keep pixels whose summed masks reach gamma (0 keeps all, "
                        f"{explanation.depth} only the strongest).")
    alpha = c[1].slider("Image weight alpha", 0.0, 1.0, defaults.alpha, 0.05, key="alpha")
    beta = c[2].slider("Heatmap weight beta", 0.0, 1.0, defaults.beta, 0.05, key="beta")
    view = c[3].radio("View", list(review.VIEWS), format_func=review.VIEWS.get, horizontal=True, key="view")
    colormap = c[4].selectbox("Colormap", review.COLORMAPS, key="colormap")
    settings = review.DisplaySettings(gamma=gamma, alpha=alpha, beta=beta, view=view, colormap=colormap)
    rendered = review.render_case(case, checkpoint, explanation, settings, truth)
    st.plotly_chart(rendered.figure, key="panes", width="stretch",
                    config={"displaylogo": False, "scrollZoom": True, "modeBarButtonsToRemove": ["toImage"]})
    st.caption(review.plain(rendered.caption))
    for note in rendered.notes:
        st.warning(note)
    report = review.report_inputs(case, checkpoint, explanation, settings, rendered, window)
    d1, d2, _ = st.columns([1, 1, 3])
    d1.download_button("Download report (PNG)", review.report_png(report), "dprotonet-report.png", "image/png",
                       key="dl_png", on_click="ignore")
    d2.download_button("Download report (JSON)", review.report_json(report), "dprotonet-report.json",
                       "application/json", key="dl_json", on_click="ignore")
    dicom_source = data if report.image_kind == "dicom" else None
    st.download_button("Download DICOM objects for a PACS (ZIP)",
                       lambda: review.dicom_export_zip(report, dicom_source), "dprotonet-dicom.zip",
                       "application/zip", key="dl_dicom", on_click="ignore", help=review.dicom_export_label(report))
    st.caption(review.dicom_export_label(report))


panes(explanation)
