"""Request and response bodies of the HTTP API: the client's models (`trainwire.models`)."""

from trainwire.models import (
    ErrorCode,
    Job,
    JobCreate,
    JobError,
    JobList,
    JobStatus,
    Losses,
    VariantInfo,
    VariantName,
)

__all__ = [
    "ErrorCode",
    "Job",
    "JobCreate",
    "JobError",
    "JobList",
    "JobStatus",
    "Losses",
    "VariantInfo",
    "VariantName",
]
