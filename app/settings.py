"""Service settings, read once from `TRAINWIRE_` environment variables."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from workers.hyperparameters import Limits

# one job per core is the fastest split for many small jobs (README, "How CPU jobs share the
# cores"); each worker holds a child process with torch loaded, so an unset count stops here
MAX_AUTO_CPU_WORKERS = 8


def usable_cores() -> int:
    """The cores this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINWIRE_", extra="ignore")

    database_url: str = Field(
        "sqlite:///./data/trainwire.db",
        description="SQLAlchemy URL of the store; a SQLite file's folder is created.",
    )
    api_token: SecretStr | None = Field(
        None, description="Bearer token every /v1 route requires; unset = no auth."
    )
    cpu_workers: int | None = Field(
        None,
        ge=0,
        description="Jobs running at once on the CPU (0: none); unset = one per core, at most "
        f"{MAX_AUTO_CPU_WORKERS}.",
    )
    jobs_per_gpu: int = Field(1, ge=0, description="Worker threads per visible CUDA device.")
    threads_per_cpu_job: int = Field(
        0,
        ge=0,
        description="torch/BLAS threads of every CPU job; 0 = elastic: each job gets the cores "
        "free when it starts (a lone job all of them), fixed for its run.",
    )
    worker_processes: bool = Field(
        True,
        description="Run each worker's jobs in a child process, so that training never waits "
        "for the service's own Python (streams, store) to release the GIL.",
    )
    max_queued: int = Field(1000, ge=1, description="Most queued jobs; more get 429.")
    max_steps: int = Field(1_000_000, ge=1, description="Most steps one job may ask for.")
    max_job_bytes: int = Field(
        1 << 30, ge=1, description="Memory budget for one job's tensors, in bytes."
    )
    job_timeout_s: float = Field(3600.0, gt=0, description="Wall-clock limit of one job.")
    store_write_timeout_s: float = Field(
        3.0,
        gt=0,
        le=600,
        description="Longest a request (a submit, a delete) waits for its write to commit; "
        "then, or as soon as the store says it cannot write, the write is given up and the "
        "request answered 503 with Retry-After: nothing it asked for happens later.",
    )
    idempotency_hours: float = Field(
        24.0,
        gt=0,
        le=24 * 365,
        description="How long an Idempotency-Key of a POST that created a job or a sweep is "
        "kept: a retry with it within this time finds what the first request made.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed besides the service's own, comma-separated.",
    )
    flush_seconds: float = Field(
        0.25,
        gt=0,
        description="Longest a step's loss waits before it is handed out (a job's first loss "
        "and its last ones go at once).",
    )
    stream_stall_seconds: float = Field(
        30.0,
        gt=0,
        description="An event stream whose reader takes nothing for this long is closed (the "
        "reader resumes later with Last-Event-ID).",
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted.")
    max_sweep_runs: int = Field(256, ge=1, description="Most runs one sweep may have.")
    backend: Literal["local", "ray"] = Field(
        "local",
        description="What runs the jobs: this host's worker pool, or a Ray cluster (docs/ray.md).",
    )
    ray_address: str | None = Field(
        None,
        validation_alias=AliasChoices("RAY_ADDRESS", "ray_address"),
        description="Ray's own RAY_ADDRESS: the cluster's host:port; unset = a Ray instance "
        "started on this host.",
    )
    ray_namespace: str = Field("trainwire", description="Ray namespace of the service's actors.")
    ray_attempts: int = Field(
        3, ge=1, description="Runs of a job whose worker or node is lost before it fails."
    )
    ray_watchdog_s: float = Field(
        30.0, gt=0, description="Silence of a job's stream after which its worker must answer."
    )

    checkpoint_every: int = Field(
        10_000,
        ge=0,
        description="Steps between a job's checkpoints when its request does not say (0: only "
        "when it is paused and at its end).",
    )
    checkpoint_dir: str | None = Field(
        None,
        description="Folder of the checkpoint files (one folder per job); unset = `checkpoints` "
        "beside the SQLite file (./data/checkpoints with another database).",
    )
    checkpoints_kept: int = Field(
        3, ge=1, description="Newest checkpoints kept per job, besides its final one."
    )

    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts a webhook may call, comma-separated: a name or address as such (then "
        "whatever it resolves to, 127.0.0.1 included), `*.example.com` (its subdomains) or `*` "
        "(any host); the last two only where every address is public. Empty (the default): "
        "webhooks are refused, so that no client can make the server call into its network.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="The Standard Webhooks secret (`whsec_` and base64) deliveries are signed "
        "with, shared with the receivers; unset = webhooks are refused.",
    )
    webhook_attempts: int = Field(
        8, ge=1, le=100, description="Attempts of a delivery before it is given up."
    )
    webhook_retry_s: float = Field(
        30.0,
        gt=0,
        description="Wait after a delivery's first failed attempt; doubled after each (with "
        "jitter of ±25%), at most TRAINWIRE_WEBHOOK_RETRY_MAX_S: 8 attempts span about an hour.",
    )
    webhook_retry_max_s: float = Field(
        1800.0, gt=0, description="Longest wait between two attempts of a delivery."
    )
    webhook_senders: int = Field(
        4, ge=1, le=64, description="Deliveries sent at once (each destination one at a time)."
    )

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _empty_secret_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_secret")
    @classmethod
    def _secret_decodes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from standardwebhooks import Webhook  # noqa: PLC0415 (only where it is set)

            try:
                Webhook(value.get_secret_value())
            except Exception:
                raise ValueError("must be base64, optionally after `whsec_`") from None
        return value

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("ray_address", mode="before")
    @classmethod
    def _empty_address_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @cached_property
    def limits(self) -> Limits:
        return Limits(max_steps=self.max_steps, max_job_bytes=self.max_job_bytes)

    def checkpoint_root(self) -> Path:
        """Where the jobs' checkpoint folders are."""
        if self.checkpoint_dir:
            return Path(self.checkpoint_dir)
        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return Path(url.database).parent / "checkpoints"
        return Path("data") / "checkpoints"

    def cpu_worker_count(self) -> int:
        """CPU workers: as set, or one per core (at most MAX_AUTO_CPU_WORKERS)."""
        if self.cpu_workers is not None:
            return self.cpu_workers
        return max(1, min(usable_cores(), MAX_AUTO_CPU_WORKERS))

    def cpu_threads(self) -> int:
        """Threads each CPU job may use, so that concurrent jobs don't oversubscribe the cores."""
        if self.threads_per_cpu_job:
            return self.threads_per_cpu_job
        return max(1, usable_cores() // max(1, self.cpu_worker_count()))

    def elastic_cores(self) -> int | None:
        """The cores CPU jobs share as they start (workers.threads); None: a fixed count each."""
        return None if self.threads_per_cpu_job else usable_cores()
