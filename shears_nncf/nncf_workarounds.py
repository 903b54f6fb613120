"""Where NNCF's W8A8 departs from what it means to do, and the patch that makes it run as intended.

NNCF 3.x's SmoothQuant has two departures that matter for a sparse W8A8 export:

1. Its numpy ``quantile`` returns float64 and SmoothQuant clips its scales with it, so every rescaled weight is
   computed and held in float64 and then converted to a new float32 constant: three copies of the smoothed weights
   at once, the peak memory of a W8A8 export. NNCF fixed the same chain in AWQ by casting to float32
   (https://github.com/openvinotoolkit/nncf/pull/3044).
2. SmoothQuant is built without the ignored scope (https://github.com/openvinotoolkit/nncf/issues/4172), so it also
   rescales the layers that keep float inputs, moving their activation outliers into weights that then get int8
   weight-only per-row scales.

:func:`smooth_quant_as_intended` patches both for the duration of a ``nncf.quantize`` call, on the NNCF versions it
was checked against (:data:`PATCHED_NNCF`); elsewhere, or where SmoothQuant's internals differ, NNCF runs as shipped.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

logger = logging.getLogger(__name__)

#: NNCF minor versions whose SmoothQuant has both departures (major, minor), inclusive
PATCHED_NNCF = ((3, 0), (3, 4))


def _version_patched() -> bool:
    import nncf

    major_minor = tuple(int(p) for p in nncf.__version__.split(".")[:2])
    return PATCHED_NNCF[0] <= major_minor <= PATCHED_NNCF[1]


@contextmanager
def smooth_quant_as_intended(ignored_scope=None) -> Iterator[bool]:
    """NNCF's SmoothQuant, for the block, in float32 and within ``ignored_scope``, as NNCF means it to run.

    Its scales take the activations' dtype and the ignored nodes are left out. Yields whether the patch applied.
    """
    from nncf.quantization.algorithms.smooth_quant.algorithm import SmoothQuant
    from nncf.scopes import get_ignored_node_names_from_ignored_scope

    scales_fn = SmoothQuant.__dict__.get("_calculate_scale_and_ratio")
    nodes_fn = SmoothQuant.__dict__.get("_get_nodes_to_smooth_data")
    if not _version_patched() or not isinstance(scales_fn, staticmethod) or not callable(nodes_fn):
        logger.debug("NNCF's SmoothQuant is not the one patched here: it runs as NNCF ships it")
        yield False
        return

    def in_activation_dtype(activations, *args, **kwargs):
        scales, ratio = scales_fn.__func__(activations, *args, **kwargs)
        return scales.astype(activations.dtype), ratio

    def outside_ignored_scope(self, graph, *args, **kwargs):
        nodes = nodes_fn(self, graph, *args, **kwargs)
        if ignored_scope is None:
            return nodes
        ignored = get_ignored_node_names_from_ignored_scope(ignored_scope, graph, strict=False)
        return [item for item in nodes if item[0].node_name not in ignored]

    SmoothQuant._calculate_scale_and_ratio = staticmethod(in_activation_dtype)
    SmoothQuant._get_nodes_to_smooth_data = outside_ignored_scope
    try:
        yield True
    finally:
        SmoothQuant._calculate_scale_and_ratio = scales_fn
        SmoothQuant._get_nodes_to_smooth_data = nodes_fn
