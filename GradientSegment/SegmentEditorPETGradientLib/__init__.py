"""The "PET Gradient" Segment Editor effect (Qt glue; kept apart from the headless PETDosePaintingLib).

GradientSegment registers it at start-up: ``qSlicerSegmentEditorScriptedEffect.setPythonSource`` loads
``SegmentEditorEffect.py`` as the module ``SegmentEditorPETGradientLib`` and instantiates its
``SegmentEditorEffect`` class. Importing this package directly gives the same class.
"""

from .SegmentEditorEffect import SegmentEditorEffect

__all__ = ["SegmentEditorEffect"]
