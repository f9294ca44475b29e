"""Tier 2: the MRML bridge (imports only ``slicer`` and ``vtk``; never Qt, CTK or the Slicer application object).

Volume nodes <-> SimpleITK images with RAS<->LPS geometry, segments <-> masks by name, transform nodes
<-> SimpleITK transforms, scenes in and outside Slicer, and ``.mrb`` bundles.
"""
