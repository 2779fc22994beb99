"""The manifest's JSON schema, generated from the pydantic models into manifests/schema.json."""
from __future__ import annotations

import json
from pathlib import Path

from .fer.classifier_config import ClassifierConfig
from .feranno.config import FERAnnoTrainConfig
from .manifest import Manifest
from .reference_config import ReferenceConfig
from .train_config import TrainConfig

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
SCHEMA_PATH = MANIFESTS / "schema.json"
# file -> (model, title) of every generated schema
SCHEMAS = {
    SCHEMA_PATH: (Manifest, "fer-synth synthesis manifest"),
    MANIFESTS / "train" / "schema.json": (TrainConfig, "fer-synth train-au-adapter config"),
    MANIFESTS / "classifiers" / "schema.json": (ClassifierConfig, "fer-synth guide/expert classifier config"),
    MANIFESTS / "train" / "feranno-schema.json": (FERAnnoTrainConfig, "fer-synth train-feranno config"),
    MANIFESTS / "reference" / "schema.json": (ReferenceConfig, "fer-synth index-reference config"),
}


def schema_text(model=Manifest, title: str = "fer-synth synthesis manifest") -> str:
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
