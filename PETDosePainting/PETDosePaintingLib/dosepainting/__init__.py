"""Dose painting: hypoxia maps, prescriptions, radiobiology, plan evaluation, DICOM-RT export."""
