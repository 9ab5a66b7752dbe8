"""GET /v1/variants: the eight programs and what each takes."""

from __future__ import annotations

from fastapi import APIRouter

from app.schemas import VariantInfo
from workers.variants import VARIANTS

router = APIRouter(tags=["variants"])


@router.get("/variants", summary="List the training variants")
def list_variants() -> list[VariantInfo]:
    """The tutorial's eight programs, with the devices each can use and its default
    hyperparameters (exactly the fields it accepts)."""
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
