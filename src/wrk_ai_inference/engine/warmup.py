"""One run on zeros at load time, so the first real request does not pay for lazy init."""

from __future__ import annotations

import numpy as np

from ..datatypes import numpy_dtype
from ..runtimes.base import ModelSession


def warm_up(session: ModelSession) -> None:
    feeds = {}
    for spec in session.inputs:
        if spec.datatype == "BYTES":
            return  # no neutral value for strings: skip rather than guess
        shape = [d if d >= 0 else 1 for d in spec.shape]
        feeds[spec.name] = np.zeros(shape, dtype=numpy_dtype(spec.datatype))
    session.run(feeds, session.new_run())
