"""The one JSON Schema check of pitstop: every schema a request carries (``response_format``, ``guided_json``,
``structured_outputs.json``, a tool's ``parameters``) is checked against its meta-schema before it is compiled."""

from __future__ import annotations

from typing import Any


def check_json_schema(schema: Any, where: str) -> None:
    """Raise ``ValueError`` starting with ``where`` unless ``schema`` is a valid JSON Schema: its meta-schema is the
    draft its ``$schema`` names, Draft 2020-12 when it names none (checked with the ``jsonschema`` library).

    Raises:
        ValueError: ``"{where}: invalid JSON Schema at {path}: {reason}"`` (``at {path}`` when not the root), or
            ``"{where}: a JSON Schema must be an object, ..."``.
    """
    import jsonschema

    if not isinstance(schema, (dict, bool)):
        raise ValueError(f"{where}: a JSON Schema must be an object, got {type(schema).__name__}")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        path = "/".join(str(p) for p in e.absolute_path)
        raise ValueError(f"{where}: invalid JSON Schema{' at ' + path if path else ''}: {e.message}") from None
