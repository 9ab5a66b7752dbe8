"""Which backend runs the jobs, from the settings."""

from __future__ import annotations

from app.settings import Settings
from workers.backend import Backend
from workers.pool import LocalBackend


def make_backend(settings: Settings) -> Backend:
    """The host's own worker pool (threads, each with a child process by default), or a Ray
    cluster's actors."""
    if settings.backend == "ray":
        from workers.ray_backend import RayBackend

        return RayBackend(
            address=settings.ray_address,
            namespace=settings.ray_namespace,
            cpu_threads=settings.threads_per_cpu_job or 1,
            max_cpu_slots=settings.cpu_workers,
            jobs_per_gpu=settings.jobs_per_gpu,
            timeout_s=settings.job_timeout_s,
            flush_seconds=settings.flush_seconds,
            attempts=settings.ray_attempts,
            watchdog_s=settings.ray_watchdog_s,
        )
    return LocalBackend(
        cpu_workers=settings.cpu_worker_count(),
        jobs_per_gpu=settings.jobs_per_gpu,
        cpu_threads=settings.cpu_threads(),
        timeout_s=settings.job_timeout_s,
        flush_seconds=settings.flush_seconds,
        processes=settings.worker_processes,
        elastic_cores=settings.elastic_cores(),
    )
