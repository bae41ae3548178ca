"""CPU runtime settings for refinement-grade work: an explicit call, never a side effect of ``import jaxed``.

The command line, the tests and the experiment scripts call :func:`configure_cpu` before JAX starts its CPU backend;
a researcher's script may call it too. Why each setting is there is in docs/SPEED.md ("CPU runtime").
"""
from __future__ import annotations

import os

__all__ = ["configure_cpu"]


def configure_cpu(threads_per_core: int = 2, async_dispatch: bool | None = None) -> None:
    """Set the CPU client's thread count and dispatch mode; effective only before JAX's CPU backend starts.

    Args:
        threads_per_core: ``PJRT_NPROC`` (the CPU client's intra-op thread count) becomes this times the cores
            available to the process, unless ``PJRT_NPROC`` is already set (a set value is never changed).
        async_dispatch: JAX's CPU asynchronous dispatch; None reads ``JAXED_CPU_ASYNC_DISPATCH`` ('1': on), default
            off (two jitted programs with batched LAPACK ``eigh`` can deadlock the intra-op pool on few cores).
    """
    if "PJRT_NPROC" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ["PJRT_NPROC"] = str(threads_per_core * cores)
    if async_dispatch is None:
        async_dispatch = os.environ.get("JAXED_CPU_ASYNC_DISPATCH", "0") == "1"
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", bool(async_dispatch))
