"""Pydantic shapes used only to document the API in /openapi.json.

Request bodies are parsed with orjson on the hot path, not through these
models; the schemas exist so that clients and fuzzers know the contract.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

_NESTED = {"anyOf": [{"type": "number"}, {"type": "boolean"},
                    {"type": "array", "items": {"anyOf": [
                        {"type": "number"},
                        {"type": "array", "items": {"type": "number"}}]}}]}

#: Body of POST /api/inference/{modelId}; self-contained (no $ref) so any client or
#: fuzzer can use it as is.
INFERENCE_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputData"],
    "properties": {
        "inputData": {
            "description": "{inputName: nested list}, or a bare nested list for a one-input "
                           "model",
            "anyOf": [{"type": "array", "items": _NESTED},
                      {"type": "object", "additionalProperties": _NESTED},
                      {"type": "string"}],
        },
        "options": {
            "type": "object",
            "properties": {
                "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3_600_000,
                            "description": "deadline in ms"},
                "topK": {"type": "integer", "minimum": 1, "maximum": 1000,
                         "description": "classification: labels per row"},
                "outputs": {"type": "array", "items": {"type": "string"},
                            "description": "only these outputs"},
            },
        },
    },
}


class ErrorBody(BaseModel):
    success: bool = False
    error: str = Field(description="ERR_ code")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody} for s in statuses}
