"""Reading a checkpoint someone else wrote, without ever running code from it.

Why: a `.pth` file is a pickle, and unpickling can call any Python function the file names. A
checkpoint downloaded from a paper's release page is data we do not control, so it is read only with
`torch.load(weights_only=True)`: tensors, numbers, strings and plain containers (plus numpy scalars,
which older trainers store as metrics). A file that needs anything else is refused with one line; it
is never loaded a second time without that restriction.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from howto_prep.errors import UserError


def _numpy_scalar_globals() -> list:
    """The reconstructors of numpy scalars (data only, no code), under numpy 2's and numpy 1's names."""
    scalar = np._core.multiarray.scalar
    allowed: list = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        dtype_class = getattr(np.dtypes, name, None)
        if dtype_class is not None:
            allowed.append(dtype_class)
    return allowed


def load_weights_only(path: Path) -> Any:
    """The object stored in `path`, read with `weights_only=True`; UserError (one line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the refusal below says enough
            # mmap: tensors are read when used, so an 8 GB file (weights + Adam state) is not all loaded
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        names = _unsafe_names(path)
        detail = f" (it names {', '.join(names[:3])})" if names else ""
        raise UserError(f"refusing {path}: it holds Python objects beyond tensors and plain values{detail}, and "
                        "loading it would run code from the file; save just its state_dict in an environment "
                        "you trust and import that") from None
    except Exception as err:  # torch raises many types for a damaged or foreign file
        first = str(err).splitlines()[0] if str(err) else ""
        raise UserError(f"cannot read checkpoint {path} ({type(err).__name__}: {first[:200]})") from None


def _unsafe_names(path: Path) -> list[str]:
    """The globals a refused file would import (read from its pickle opcodes, nothing executed)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a legacy (non-zip) file: the names are not listed, the refusal stands
        return []
