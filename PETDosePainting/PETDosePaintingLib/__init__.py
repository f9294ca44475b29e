"""PETDosePainting shared library: PET-guided GTV segmentation and dose painting for head-and-neck RT.

Tier 1 (algorithms: ``imaging``, ``phantom``, ``segmentation``, ...) imports only numpy, scipy,
SimpleITK, scikit-image and pydicom. Tier 2 (``mrml``) imports only ``slicer`` and ``vtk``. Nothing
here imports Qt, so the library runs in plain Python (batch, CI) and inside 3D Slicer.

Importing the package has no side effects; import the sub-modules you need.
"""

__version__ = "0.1.0"
