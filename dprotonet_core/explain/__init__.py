"""Explanations: the MDM decoder (mdm.py, eq. 12-14) and its images (overlay.py, eq. 15-18)."""
