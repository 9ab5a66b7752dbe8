"""The store's schema: jobs, their losses in chunks of consecutive steps, their checkpoints, and
sweeps (grids of jobs)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    # pk orders jobs by submission and keys the losses compactly; id is the public name
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    Column("variant", String(32), nullable=False),
    Column("label", String(200)),
    Column("hyperparameters", JSON, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("device", String(16), nullable=False),
    Column("assigned_device", String(16)),
    Column("status", String(16), nullable=False),
    Column("step", Integer, nullable=False, default=0),
    Column("steps", Integer, nullable=False),
    Column("last_loss", Float),
    Column("created_at", String(32), nullable=False),
    Column("started_at", String(32)),
    Column("finished_at", String(32)),
    Column("environment", JSON),
    Column("error_code", String(32)),
    Column("error_message", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("sweep_id", String(32)),  # the sweep this job is a run of (sweeps.id), or NULL
    Column("checkpoint_every", Integer),  # steps between checkpoints; 0: on pause and at the end
    Column("forked_from_job", String(32)),  # a fork: the job (id) and step it started from
    Column("forked_from_step", Integer),
    Column("checkpoint_error", Text),  # why the last checkpoint could not be written, or NULL
    Column("webhook_url", String(2048)),  # where its status changes are sent, or NULL
    Column("webhook_events", JSON),  # the events wanted: ["started", "succeeded", ...]
    Index("ix_jobs_status_pk", "status", "pk"),
    Index("ix_jobs_variant_pk", "variant", "pk"),
    Index("ix_jobs_sweep_id_pk", "sweep_id", "pk"),
)

# steps [first_step, end_step) of a job, their losses packed as float64 (app.store.chunks)
loss_chunks = Table(
    "loss_chunks",
    metadata,
    Column("job_pk", Integer, ForeignKey("jobs.pk", ondelete="CASCADE"), primary_key=True),
    Column("first_step", Integer, primary_key=True, autoincrement=False),
    Column("end_step", Integer, nullable=False),
    Column("losses", LargeBinary, nullable=False),  # NaN where the loss was not finite
    Index("ix_loss_chunks_job_pk_end_step", "job_pk", "end_step"),
    sqlite_with_rowid=False,
)

# the saved states of a job (the files: workers.checkpoints, <checkpoint dir>/<job id>/); a row
# is written only once its file is whole and durable
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("job_pk", Integer, ForeignKey("jobs.pk", ondelete="CASCADE"), primary_key=True),
    Column("step", Integer, primary_key=True, autoincrement=False),  # the state after `step` steps
    Column("bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
)

# A sweep's status, counts and end are read from its runs (the jobs with its id): only what
# the runs cannot tell is kept here.
sweeps = Table(
    "sweeps",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    Column("variant", String(32), nullable=False),
    Column("label", String(200)),
    Column("hyperparameters", JSON, nullable=False),  # the base, resolved
    Column("grid", JSON, nullable=False),
    Column("seed", BigInteger),  # every run's seed when the grid has none
    Column("device", String(16), nullable=False),
    Column("fuse", String(8), nullable=False),  # auto, true, false
    Column("fused", Boolean, nullable=False),
    Column("exact", Boolean),  # null: as `fuse` implies (trainwire.sweeps.SweepCreate.exact)
    Column("cancelled", Boolean, nullable=False, default=False),  # POST .../cancel was called
    Column("created_at", String(32), nullable=False),
    Column("webhook_url", String(2048)),
    Column("webhook_events", JSON),
    Index("ix_sweeps_variant_pk", "variant", "pk"),
)

# The Idempotency-Key of each POST that created something, for a while (Settings
# .idempotency_hours): a retry with the same key and body finds what the first one made.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(16), primary_key=True),  # the collection posted to: jobs, sweeps
    Column("key", String(255), primary_key=True),
    Column("body_sha256", String(64), nullable=False),
    Column("resource_id", String(32), nullable=False),  # the job's or the sweep's id
    Column("created_at", String(32), nullable=False),
    Index("ix_idempotency_keys_created_at", "created_at"),
)

# The outbox: one row per notification, inserted in the transaction of the status change that
# causes it, sent (and retried) by app.webhooks until delivered or given up.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),  # the webhook-id header
    Column("job_id", String(32)),  # a job's event, or NULL
    Column("sweep_id", String(32)),  # a sweep's event, or NULL
    Column("url", String(2048), nullable=False),
    Column("event", String(32), nullable=False),  # job.succeeded, sweep.failed, ...
    Column("payload", Text, nullable=False),  # the body, as sent on every attempt
    Column("status", String(16), nullable=False),  # pending, delivered, failed
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("next_attempt", Float),  # seconds since the epoch; NULL once not pending
    Column("created_at", String(32), nullable=False),
    Column("delivered_at", String(32)),
    Index("ix_webhook_deliveries_status_next", "status", "next_attempt"),
    Index("ix_webhook_deliveries_job_id", "job_id"),
    Index("ix_webhook_deliveries_sweep_id", "sweep_id"),
)
