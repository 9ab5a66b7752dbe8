"""Drives a trainwire server through a client generated from its /openapi.json by
openapi-python-client; run by tests/client/test_generated_client.py with that tool's own venv
(it imports nothing of trainwire). Prints what it saw as one JSON object."""

import json
import sys

from tw_generated import Client
from tw_generated.api.jobs import (
    cancel_job,
    get_job,
    get_losses,
    list_jobs,
    stream_job_events,
    submit_job,
)
from tw_generated.api.variants import list_variants
from tw_generated.models import (
    Error,
    Float64Hyperparameters,
    HandwrittenHyperparameters,
    HTTPValidationError,
    Job,
    JobCreateNumpy,
    JobCreateNumpyVariant,
    JobCreateTensors,
    JobCreateTensorsVariant,
    JobStatus,
    Losses,
    Variant,
)

client = Client(base_url=sys.argv[1], timeout=30.0)
seen = {}

made = submit_job.sync_detailed(
    client=client,
    body=JobCreateNumpy(
        variant=JobCreateNumpyVariant.NUMPY,
        hyperparameters=Float64Hyperparameters(steps=3),
        seed=5,
        label="generated",
    ),
)
assert made.status_code == 201 and isinstance(made.parsed, Job), made
job = made.parsed
seen["submitted"] = {"id": job.id, "variant": job.variant.value, "seed": job.seed}

got = get_job.sync(job_id=job.id, client=client)
assert isinstance(got, Job)
seen["got"] = {
    "id": got.id,
    "label": got.label,
    "variant_is_enum": isinstance(got.variant, Variant),
}

while got.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
    got = get_job.sync(job_id=job.id, client=client)
seen["final"] = got.status.value

listed = list_jobs.sync(client=client, label=["generated"], variant=[Variant.NUMPY])
seen["listed"] = [item.id for item in listed.items]

losses = get_losses.sync(job_id=job.id, client=client)
assert isinstance(losses, Losses)
seen["losses"] = {"steps": losses.steps, "count": len(losses.losses)}

running = submit_job.sync(
    client=client,
    body=JobCreateTensors(
        variant=JobCreateTensorsVariant.TENSORS,
        hyperparameters=HandwrittenHyperparameters(
            steps=1_000_000, batch_size=8, d_in=20, hidden=10, d_out=2
        ),
    ),
)
cancelled = cancel_job.sync_detailed(job_id=running.id, client=client)
seen["cancel"] = {"status_code": cancelled.status_code, "is_job": isinstance(cancelled.parsed, Job)}

missing = get_job.sync_detailed(job_id="0123456789abcdef", client=client)
assert isinstance(missing.parsed, Error)
seen["404"] = {"status_code": missing.status_code, "detail": missing.parsed.detail}

final = cancel_job.sync_detailed(job_id=job.id, client=client)
assert isinstance(final.parsed, Error)
seen["409"] = {"status_code": final.status_code, "detail": final.parsed.detail}

bad = submit_job.sync_detailed(
    client=client,
    body=JobCreateNumpy(
        variant=JobCreateNumpyVariant.NUMPY, hyperparameters=Float64Hyperparameters(steps=0)
    ),
)
assert isinstance(bad.parsed, HTTPValidationError)
seen["422"] = {
    "status_code": bad.status_code,
    "detail": [{"loc": e.loc, "msg": e.msg, "type": e.type_} for e in bad.parsed.detail],
}

# the stream of a finished job: the whole stream, as text (not parsed as JSON)
stream = stream_job_events.sync_detailed(job_id=job.id, client=client)
seen["events"] = {"status_code": stream.status_code, "text": stream.content.decode()}

seen["variants"] = [v.name.value for v in list_variants.sync(client=client)]
print(json.dumps(seen))
