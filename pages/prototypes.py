"""Prototypes (researchers): every prototype by class, its stored MDM heatmap, weights and provenance."""

import streamlit as st

import app_ui as ui
from dprotonet_core import review

ui.page_header("Prototypes", ui.current_entry())
checkpoint = ui.current_checkpoint()
if checkpoint is None:
    st.stop()
if not checkpoint.prototypes:
    st.warning("This checkpoint stores no prototype records (prototypes/index.json); project the prototypes first.")
    st.stop()

st.markdown(
    "Each prototype is a part of a training image the model compares new images with (eq. 9-11). The heatmap "
    "shows the region of its source image the prototype stands for (MDM, eq. 14/16, stored in the checkpoint)."
)
st.caption(f"Heatmaps: {review.plain(review.stored_prototype_method(checkpoint))}.")
classes = st.multiselect("Show classes", checkpoint.classes, default=checkpoint.classes, key="proto_classes")
gamma = st.slider("Threshold gamma", 0.0, float(len(checkpoint.prototype_mask_vectors or [None] * 10)),
                  review.default_settings().gamma, 0.5, key="proto_gamma")
settings = review.DisplaySettings(gamma=gamma)  # the paper's alpha and beta (config.OverlayConfig)
cards = review.prototype_cards(checkpoint, classes, settings)
st.plotly_chart(review.weights_figure(checkpoint, classes), width="stretch", key="weights")

for class_name in classes:
    group = [c for c in cards if c.class_name == class_name]
    st.subheader(f"Class {review.plain(class_name)}: {len(group)} prototypes")
    columns = st.columns(5)
    for i, card in enumerate(group):
        with columns[i % 5]:
            st.image(card.image, caption=f"#{card.index} from {review.plain(card.source_id)}", width="stretch")

st.divider()
st.subheader("Prototype detail")
options = [c.index for c in cards]
if not options:
    st.info("Choose at least one class above.")
    st.stop()
chosen = st.selectbox("Open prototype", options, format_func=lambda j: f"#{j} ({cards[options.index(j)].class_name})",
                      key="proto_detail")
card = cards[options.index(chosen)]
left, right = st.columns([1, 1])
left.image(review.prototype_card(checkpoint, chosen, settings, size=448).image, width="stretch")
right.table(review.prototype_provenance(card))
