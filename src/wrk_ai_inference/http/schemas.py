"""Pydantic shapes used only to document the API in /openapi.json.

Request bodies are parsed with orjson on the hot path, not through these
models; the schemas exist so that clients and fuzzers know the contract.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class InferenceOptions(BaseModel):
    timeout: float | None = Field(None, gt=0, le=3_600_000, description="deadline in ms")
    topK: int | None = Field(None, ge=1, le=1000, description="classification: labels per row")
    outputs: list[str] | None = Field(None, description="only these outputs")


class InferenceRequest(BaseModel):
    inputData: Any = Field(description="{inputName: nested list}, or a bare nested list for a "
                           "one-input model")
    options: InferenceOptions | None = None


class ErrorBody(BaseModel):
    success: bool = False
    error: str = Field(description="ERR_ code")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody} for s in statuses}
