"""DProtoNet Review: placeholder entry until the app lands."""

import streamlit as st

st.set_page_config(page_title="DProtoNet Review", layout="wide")
st.title("DProtoNet Review")
st.info("The review app is being built. Research software, not a medical device.")
