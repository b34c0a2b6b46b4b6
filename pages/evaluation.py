"""Evaluation: what `python -m dprotonet_core evaluate --attach` stored in the checkpoint."""

import streamlit as st

import app_ui as ui
from dprotonet_core import review

entry = ui.current_entry()
ui.page_header("Evaluation", entry)
if entry is None or not entry.valid:
    st.info("Choose a checkpoint in the sidebar.")
    st.stop()

view = review.load_evaluation(entry.path)
if view is None:
    st.info(review.plain(
        "No evaluation is stored with this checkpoint yet. Run "
        f"python -m dprotonet_core evaluate --checkpoint {entry.path} --attach and reload this page."
    ))
    st.stop()
for problem in view.problems:
    st.warning(review.plain(problem))


def show(view, entry) -> None:
    """Everything the stored evaluation says (its values are the checkpoint's: untrusted, checked as read)."""
    data = view.metrics.get("dataset") or {}
    st.caption(review.plain(  # the evaluation folder is the checkpoint's: its text is shown as written
        f"Measured on {data.get('name', '?')} ({data.get('split', '?')} split, {data.get('n', '?')} images); "
        f"stored {review.format_timestamp(view.metrics.get('created'))}."
    ))
    st.subheader("Classification")
    if review.on_training_images(view, entry.card):
        st.warning(review.TRAINING_IMAGES_WARNING, icon=":material/warning:")
        cv_rows = review.cross_validation_rows((entry.card or {}).get("cross_validation"))
        if cv_rows:
            st.markdown("**The model's expected accuracy** (cross-validation of the same recipe: each figure from "
                        "models that never trained on the images they were measured on)")
            st.dataframe(cv_rows, hide_index=True, width="stretch")
            st.caption(review.CROSS_VALIDATED_ROWS)
        st.markdown("**On its own training images** (not its accuracy):")
    for note in (view.metrics.get("dataset") or {}).get("notes") or []:
        st.caption(review.plain(f"Note: {note}"))
    for column, (label, value) in zip(st.columns(4), review.classification_headline(view, entry.card).items()):
        column.metric(label, value)
    decision = (view.metrics.get("classification") or {}).get("decision")
    if decision:
        st.caption(review.plain(f"Decision rule: {decision}."))
    by_view = review.classification_by_view(view)
    if by_view:
        st.markdown("**Within each view** (AP bedside films are mostly positives here: a model that only recognised "
                    "the view would score well overall and near 0.5 within a view)")
        st.dataframe(by_view, hide_index=True, width="stretch")
    by_folder = review.classification_by_folder(view)
    if by_folder:
        st.markdown("**Within each data folder**, beside the AUC the view alone would reach on the same images")
        st.dataframe(by_folder, hide_index=True, width="stretch")
    reliability = review.evaluation_reliability(view.metrics)
    if reliability:
        probability = review.plain((view.metrics.get("classification") or {}).get("probability", ""))
        st.markdown(f"**Calibration** ({probability})")
        for column, (title, figures) in zip(st.columns(len(reliability)), reliability):
            column.plotly_chart(review.reliability_figure(figures, title), width="stretch", key=f"reliability_{title}")
        st.caption(review.RELIABILITY_CAPTION)
    if review.on_training_images(view, entry.card):
        st.caption("The confusion matrix and ROC curve below are on the training images too.")
    for column, name in zip(st.columns(2), ("confusion_matrix", "roc")):
        if name in view.figures:
            column.plotly_chart(view.figures[name], width="stretch", key=f"fig_{name}")

    st.subheader("Explanations: Table 5 (recognition and localisation)")
    st.caption(review.plain(review.table5_caption(view, entry.card)))
    if view.table5:
        st.dataframe(view.table5, hide_index=True, width="stretch")
        st.caption("AD: average drop, AI: average increase (%), D/I: deletion/insertion AUC; ↑ higher is better, "
                   "↓ lower is better.")
    else:
        st.info("No explanation metrics were stored.")
    for column, name in zip(st.columns(2), ("deletion", "insertion")):
        if name in view.figures:
            column.plotly_chart(view.figures[name], width="stretch", key=f"fig_{name}")


try:
    show(view, entry)
except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # a value of an unexpected type
    st.error(review.plain(f"This checkpoint's stored evaluation holds a value the page cannot show "
                          f"({type(exc).__name__}); nothing more of it is shown."), icon=":material/report:")
