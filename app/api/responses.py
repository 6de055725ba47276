"""Answers of the hot endpoints, serialised once.

FastAPI turns a returned model into a dict, validates that against the response model and
serialises the result; for a model that is already valid that is most of a request's cost. The
hot routes (submit, the worker exchange, reading tasks) declare `response_model` for the OpenAPI
schema and return the model's own JSON instead, which FastAPI passes through untouched."""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
