"""Model card: card.json of the chosen checkpoint, rendered."""

import streamlit as st

import app_ui as ui
from dprotonet_core import review

entry = ui.current_entry()
ui.page_header("Model card", entry)
if entry is None or entry.card is None:
    st.info("Choose a checkpoint in the sidebar.")
    st.stop()

card = entry.card
summary = review.checkpoint_summary(card)
plain = review.plain  # the card is untrusted: its text is shown as written, never rendered as markdown
st.subheader(plain(summary["title"]))
st.markdown(
    f"**Task:** {plain(summary['task'])}  \n**Classes:** {', '.join(plain(c) for c in summary['classes'])}  \n"
    f"**Trained on:** {plain(summary['trained_on'])}  \n**Backbone:** {plain(summary['backbone'])}, "
    f"input {plain(summary['input_size'])} x {plain(summary['input_size'])} pixels"
    + (f"  \n**Data credit:** {plain(review.data_credit(card))}" if review.data_credit(card) else "")
)
performance = review.performance_rows(card)
if performance:
    st.markdown("**Measured performance**")
    st.dataframe(performance, hide_index=True, width="stretch")
    st.caption(review.performance_caption(card))
reliability = review.card_reliability(card)
st.markdown("**Calibration: does a shown probability mean what it says?**")
if reliability:
    for column, (title, figures) in zip(st.columns(len(reliability)), reliability):
        column.plotly_chart(review.reliability_figure(figures, title, card["classes"][-1]), width="stretch",
                            key=f"reliability_{title}")
    st.caption(review.RELIABILITY_CAPTION)
else:
    st.caption("This card stores no calibration measurement: the probability the app shows for this model is the "
               "softmax of eq. 3, not calibrated, and is labelled so.")
for title, fields in review.card_sections(card):
    with st.expander(title, expanded=title in ("Intended use and limits", "What it accepts, and how it decides")):
        for key, value in fields.items():
            review_text = review.card_value_markdown(key, value)
            if review_text is not None:
                st.markdown(review_text)
            else:
                st.markdown(f"**{plain(review.card_label(key))}**")
                st.json(value, expanded=1)
with st.expander("Integrity: sha256 of every file (verified when the model is loaded)"):
    st.dataframe(review.card_integrity(card), hide_index=True, width="stretch")
