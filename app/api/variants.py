"""GET /v1/variants: the eight programs and what each takes."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter

from app.api.deps import Service
from trainwire.models import VariantInfo
from workers.variants import VARIANTS

router = APIRouter(tags=["variants"])


@router.get("/variants", summary="List the training variants")
async def list_variants(service: Service) -> list[VariantInfo]:
    """The tutorial's eight programs, with the devices each can use, those this server's
    workers have now, and its default hyperparameters (exactly the fields it accepts)."""
    kinds = {device.split(":")[0] for device in service.backend.devices}
    return [
        v.model_copy(update={"available_devices": [d for d in v.devices if d in kinds]})
        for v in _variants()
    ]


@cache
def _variants() -> list[VariantInfo]:
    # the catalogue is fixed for the process's life: build the list (and its JSON schemas) once
    return [
        VariantInfo(
            name=v.name,  # type: ignore[arg-type]
            title=v.title,
            description=v.description,
            devices=list(v.devices),
            defaults=v.hyperparameters().model_dump(),
            hyperparameters_schema=v.hyperparameters.model_json_schema(),
        )
        for v in VARIANTS.values()
    ]
