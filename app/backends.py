"""Which backend runs the jobs, from the settings."""

from __future__ import annotations

from app.settings import Settings
from workers.backend import Backend
from workers.pool import LocalBackend


def make_backend(settings: Settings) -> Backend:
    """The host's own worker pool (threads, each with a child process by default)."""
    return LocalBackend(
        cpu_workers=settings.cpu_worker_count(),
        jobs_per_gpu=settings.jobs_per_gpu,
        cpu_threads=settings.cpu_threads(),
        timeout_s=settings.job_timeout_s,
        flush_seconds=settings.flush_seconds,
        processes=settings.worker_processes,
        elastic_cores=settings.elastic_cores(),
    )
