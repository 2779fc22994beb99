"""The manifest's JSON schema, generated from the pydantic models into manifests/schema.json."""
from __future__ import annotations

import json
from pathlib import Path

from .manifest import Manifest

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "manifests" / "schema.json"


def schema_text() -> str:
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fer-synth synthesis manifest"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
