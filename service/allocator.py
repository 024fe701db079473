"""glibc's allocator set up so that the service gives memory back after a burst of large images.

glibc serves an allocation above its mmap threshold with its own ``mmap`` and unmaps it when freed,
but by default it raises that threshold to the size of each large block freed (up to 32 MiB), so
the next decoded images land in the heaps and arenas, which are rarely returned to the kernel.
Fixing the threshold keeps large image buffers in their own mappings: on a 2-core machine, at 1 MiB, a
burst of large images left 13 MB above the warmed-up size instead of 180 MB (``bench/README.md``). It is
fixed at 2 MiB so that the buffers every ordinary request needs (a 10-crop array is 1.5 MB; a 512x512 photo
decodes into 1 MB) are reused from the heap rather than mapped, faulted in and zeroed again for each image:
at 1 MiB that cost 0.7-0.9 ms per image at concurrency 1, for 25-30 MB less resident after a burst.
``MALLOC_MMAP_THRESHOLD_`` in the environment does the same from process start; the serve script, the
container image and the Kubernetes manifest set it too.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)

MMAP_THRESHOLD_BYTES = 2 * 1024 * 1024
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def fix_mmap_threshold(environ: Mapping[str, str] = os.environ) -> bool:
    """Fix glibc's mmap threshold at 2 MiB unless the environment chose one; True when it was set."""
    if MMAP_THRESHOLD_ENV in environ or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not applied:
        log.debug("mallopt(M_MMAP_THRESHOLD) was refused by this C library")
    return applied
