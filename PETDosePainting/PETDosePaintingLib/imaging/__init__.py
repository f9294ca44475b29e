"""Image model and input/output: SimpleITK images (LPS, units in metadata), files, DICOM, SUV."""
