"""Error types of the PETDosePainting library.

Every error meant for a user carries a message that names the file (or parameter) and the problem,
so the command line, the Slicer panels and the batch runner can show it as it is.

Exit-code convention of the ``petdp`` command (see :mod:`PETDosePaintingLib.cli.main`):

* ``0`` success;
* ``1`` the computation failed (:class:`ProcessingError`, or an unexpected exception);
* ``2`` the request was invalid: bad command-line usage, or bad input data (:class:`InputError`
  and its subclasses).
"""

from __future__ import annotations

from pathlib import Path


class PETDPError(Exception):
    """Base class of all errors raised on purpose by the library."""

    exit_code = 1


class InputError(PETDPError, ValueError):
    """The input (a file, an image, a parameter) cannot be used as given."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class GeometryError(InputError):
    """Two images that must share a grid (or a frame of reference) do not."""


class UnitsError(InputError):
    """An image does not carry the physical units a method requires."""


class DicomError(InputError):
    """A DICOM file or series is unusable (missing or contradictory tags, mixed series...)."""


class OutputError(InputError):
    """An output location is unsafe to write (it would overwrite input or unrelated files)."""


class ProcessingError(PETDPError, RuntimeError):
    """A computation could not produce a valid result (e.g. no convergence)."""

    exit_code = 1
