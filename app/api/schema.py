"""The OpenAPI document as other people's tools read it: short operation ids, one `Variant`,
each variant's own hyperparameters, one error body, and event streams as `text/event-stream`.

FastAPI writes the document from the routes; this module finishes it once, when it is first
asked for (`install(app)`): what it adds describes what the routes already validate.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from trainwire.hyperparameters import HYPERPARAMETERS
from trainwire.jobs import VARIANT_NAMES

REF = "#/components/schemas/"
# the operations whose 200 is an event stream, and the events they send
STREAMS = {"stream_job_events", "stream_sweep_events"}
ERROR_STATUSES = ("400", "401", "404", "409", "413", "429", "503")
SWAGGER_NOTE = (
    "\n\nSwagger UI's *Try it out* shows the answer once the stream has ended (when the job "
    "has); use `curl -N`, an EventSource or `trainwire watch` to see it live."
)


def operation_id(route: APIRoute) -> str:
    """A route's operation id: its function's name (`submit_job`, `list_jobs`, ...)."""
    return route.name


def install(app: FastAPI) -> None:
    """Make `app.openapi()` return the finished document (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = finish(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def finish(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    _one_variant(document, schemas)
    _hyperparameters_by_variant(schemas)
    _error_bodies(document, schemas)
    _event_streams(document)
    return document


def _one_variant(document: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Every inline enum of the eight names becomes a reference to one `Variant`."""
    schemas["Variant"] = {
        "type": "string",
        "enum": list(VARIANT_NAMES),
        "title": "Variant",
        "description": "One of the tutorial's eight programs (GET /v1/variants).",
    }

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("enum") == list(VARIANT_NAMES) and node is not schemas["Variant"]:
                kept = {k: v for k, v in node.items() if k in ("description", "examples")}
                return (
                    {"$ref": REF + "Variant", **kept}
                    if not kept
                    else {
                        "allOf": [{"$ref": REF + "Variant"}],
                        **kept,
                    }
                )
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    for key in list(document["paths"]):
        document["paths"][key] = walk(document["paths"][key])
    for name in list(schemas):
        if name != "Variant":
            schemas[name] = walk(schemas[name])


def _hyperparameters_by_variant(schemas: dict[str, Any]) -> None:
    """A job's and a sweep's request as a union discriminated by `variant`: each variant's
    request has its own hyperparameters (names, types, ranges, defaults), as the service checks
    them."""
    for model in set(HYPERPARAMETERS.values()):
        schema = model.model_json_schema(ref_template=REF + "{model}")
        schema.pop("$defs", None)
        schemas[model.__name__] = schema
    for request in ("JobCreate", "SweepCreate"):
        if request not in schemas:
            continue
        base = schemas.pop(request)
        mapping: dict[str, str] = {}
        for variant, model in HYPERPARAMETERS.items():
            name = request.replace("Create", "") + "Create" + _camel(variant)
            one = copy.deepcopy(base)
            one["title"] = name
            one["properties"]["variant"] = {"type": "string", "const": variant, "enum": [variant]}
            hyperparameters = one["properties"]["hyperparameters"]
            one["properties"]["hyperparameters"] = {
                "allOf": [{"$ref": REF + model.__name__}],
                "description": hyperparameters.get("description", ""),
            }
            if request == "JobCreate":
                one.pop("examples", None)
            schemas[name] = one
            mapping[variant] = REF + name
        schemas[request] = {
            "title": request,
            "description": base.get("description", ""),
            "oneOf": [{"$ref": ref} for ref in mapping.values()],
            "discriminator": {"propertyName": "variant", "mapping": mapping},
            **({"examples": base["examples"]} if "examples" in base else {}),
        }


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _error_bodies(document: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Every error status with a body: `{"detail": "..."}` (422: FastAPI's list of errors)."""
    schemas["Error"] = {
        "title": "Error",
        "type": "object",
        "properties": {"detail": {"type": "string", "title": "Detail"}},
        "required": ["detail"],
        "example": {"detail": "no job with id '0123456789abcdef'"},
    }
    # the 422 shape that both FastAPI's validation and the service's own checks answer
    schemas["ValidationError"] = {
        "title": "ValidationError",
        "type": "object",
        "properties": {
            "loc": {
                "title": "Location",
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "description": "Where: body, query, path or header, then the field's path.",
            },
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"},
        },
        "required": ["loc", "msg", "type"],
    }
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status in ERROR_STATUSES:
                    response.setdefault("content", {})["application/json"] = {
                        "schema": {"$ref": REF + "Error"}
                    }
                elif status == "422":
                    response.setdefault("content", {})["application/json"] = {
                        "schema": {"$ref": REF + "HTTPValidationError"}
                    }


def _event_streams(document: dict[str, Any]) -> None:
    for operations in document["paths"].values():
        for operation in operations.values():
            if operation.get("operationId") in STREAMS:
                ok = operation["responses"]["200"]
                ok["content"].pop("application/json", None)
                operation["description"] = operation.get("description", "") + SWAGGER_NOTE
