"""DICOM objects a PACS files: SEG, SR and Secondary Capture of a reviewed image (dicom_objects.py)."""
