"""Code vLLM runs in each of its processes: an engine dies with the process that started it, and
knows zoomrl's weight-transfer backend.

vLLM's AsyncLLM starts its engine core as a child process, and the core starts its workers. When
the parent is killed (a rollout actor or a `zoomrl train` driver ended by kill -9, or by Ray when
the driver dies), nothing tells the child: it is re-parented to PID 1 and keeps the model in
memory and its ports open. Linux can signal a child when its parent dies (prctl
PR_SET_PDEATHSIG), but only the child can ask for it, after it started; vLLM loads the
`vllm.general_plugins` entry points (pyproject.toml) early in every process it starts, which is
where `die_with_parent` runs. SIGTERM is vLLM's own shutdown: the core stops its workers and
frees its shared memory.

`register_weight_transfer` adds the shared-memory backend of `core.weight_transfer` to vLLM's
registry of weight-transfer engines, in the worker processes where vLLM looks it up by name.

This module imports only the standard library (vLLM's modules inside the function that needs
them): it is loaded in every vLLM process.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> None:
    """In a multiprocessing child (vLLM's engine core and workers), get SIGTERM when the parent
    dies. Processes that no multiprocessing parent started (a Ray worker, a driver) are left as
    they are."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent.pid:  # the parent died before the request: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def register_weight_transfer() -> None:
    """Register `core.weight_transfer.BACKEND` (imported when an engine first uses it). vLLM may
    load plugins more than once in a process: a second call does nothing."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    from core.weight_transfer import BACKEND

    if BACKEND not in WeightTransferEngineFactory._registry:  # no public "is registered" query
        WeightTransferEngineFactory.register_engine(BACKEND, "core.weight_transfer",
                                                    "SharedMemoryWeightTransferEngine")
    from core.collective_transfer import BACKEND as BROADCAST  # the broadcast weight sync

    if BROADCAST not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BROADCAST, "core.collective_transfer",
                                                    "BroadcastWeightTransferEngine")
