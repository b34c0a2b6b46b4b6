"""DProtoNet Review: the Streamlit entry point (`make run`).

Shared sidebar (checkpoint picker) and navigation over pages/; the pages are thin and call
dprotonet_core.review (computation) through app_ui.py (Streamlit glue, beside this file).
"""

import streamlit as st

import app_ui as ui
from dprotonet_core import review

review.configure_torch()
review.configure_logging()

st.set_page_config(
    page_title="DProtoNet Review", page_icon=":material/radiology:", layout="wide", initial_sidebar_state="expanded"
)

pages = [
    st.Page("pages/review.py", title="Review an image", icon=":material/search:", default=True),
    st.Page("pages/prototypes.py", title="Prototypes", icon=":material/grid_view:"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/monitoring:"),
    st.Page("pages/model_card.py", title="Model card", icon=":material/description:"),
]
navigation = st.navigation(pages)
ui.sidebar_checkpoint_picker()
navigation.run()
