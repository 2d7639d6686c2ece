"""A small set of tool-parameter JSON Schemas in the shape agent frameworks send (OpenAI function ``parameters``),
written for pitstop's structured-output benchmarks: typical of coding / web / calendar agents (strings, enums,
integers with bounds, arrays, nested objects, optional fields, ``anyOf``). Used by
``benchmarks/structured_outputs_cost.py`` and ``benchmarks/structured_outputs_backends.py``.
"""

from __future__ import annotations

from typing import Any


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required if required is not None else list(props),
            "additionalProperties": False}


_S = {"type": "string"}
_I = {"type": "integer"}
_B = {"type": "boolean"}

TOOL_SCHEMAS: list[dict[str, Any]] = [
    _obj({"location": _S, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["location"]),
    _obj({"command": _S, "timeout_s": {"type": "integer", "minimum": 1, "maximum": 600}}, ["command"]),
    _obj({"path": _S, "offset": {"type": "integer", "minimum": 0}, "limit": {"type": "integer", "minimum": 1}},
         ["path"]),
    _obj({"path": _S, "content": _S}),
    _obj({"path": _S, "old_string": _S, "new_string": _S, "replace_all": _B}, ["path", "old_string", "new_string"]),
    _obj({"query": _S, "num_results": {"type": "integer", "minimum": 1, "maximum": 20}}, ["query"]),
    _obj({"url": {"type": "string", "format": "uri"}, "prompt": _S}),
    _obj({"pattern": _S, "path": _S, "glob": _S, "case_insensitive": _B}, ["pattern"]),
    _obj({"title": _S, "start": {"type": "string", "format": "date-time"},
          "end": {"type": "string", "format": "date-time"},
          "attendees": {"type": "array", "items": {"type": "string", "format": "email"}},
          "location": _S}, ["title", "start", "end"]),
    _obj({"to": {"type": "array", "items": _S, "minItems": 1}, "subject": _S, "body": _S,
          "cc": {"type": "array", "items": _S}}, ["to", "subject", "body"]),
    _obj({"todos": {"type": "array", "items": _obj({
        "content": _S, "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
        "priority": {"type": "string", "enum": ["high", "medium", "low"]}, "id": _S})}}),
    _obj({"sql": _S, "params": {"type": "array", "items": {"anyOf": [_S, {"type": "number"}, {"type": "null"}]}}},
         ["sql"]),
    _obj({"ticker": {"type": "string", "pattern": "^[A-Z]{1,5}$"},
          "period": {"type": "string", "enum": ["1d", "5d", "1mo", "6mo", "1y"]}}),
    _obj({"amount": {"type": "number", "exclusiveMinimum": 0}, "from_currency": {"type": "string", "minLength": 3,
                                                                                 "maxLength": 3},
          "to_currency": {"type": "string", "minLength": 3, "maxLength": 3}}),
    _obj({"repo": _S, "title": _S, "body": _S, "labels": {"type": "array", "items": _S},
          "assignees": {"type": "array", "items": _S}, "draft": _B}, ["repo", "title"]),
    _obj({"user": _obj({"name": _S, "email": _S, "age": {"type": "integer", "minimum": 0},
                        "address": _obj({"street": _S, "city": _S, "zip": _S, "country": _S}, ["city", "country"])},
                       ["name", "email"])}),
    _obj({"origin": _S, "destination": _S, "date": {"type": "string", "format": "date"},
          "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
          "cabin": {"type": "string", "enum": ["economy", "premium", "business", "first"]}},
         ["origin", "destination", "date"]),
    _obj({"text": _S, "target_language": {"type": "string", "enum": ["en", "fr", "de", "es", "it", "ja", "zh"]},
          "formality": {"type": "string", "enum": ["formal", "informal"]}}, ["text", "target_language"]),
    _obj({"expression": _S, "precision": {"type": "integer", "minimum": 0, "maximum": 15}}, ["expression"]),
    _obj({"items": {"type": "array", "items": _obj({"sku": _S, "quantity": {"type": "integer", "minimum": 1},
                                                   "options": {"type": "object",
                                                               "additionalProperties": _S}}, ["sku", "quantity"]),
                    "minItems": 1},
          "shipping": {"anyOf": [_obj({"method": {"const": "pickup"}, "store_id": _S}),
                                 _obj({"method": {"const": "delivery"}, "address": _S})]},
          "coupon": {"type": ["string", "null"]}}, ["items", "shipping"]),
]
"""20 tool-parameter schemas (draft 2020-12 subset every OpenAI ``strict`` tool uses)."""
