"""The JSON schemas of the tool's YAML files, generated from the pydantic models.

``build-dataset schema [--config NAME]`` prints one from the models, which works wherever the tool is
installed. ``--write`` / ``--check`` maintain the copies in a source checkout's ``manifests/`` folder
(editors read them through the ``$schema`` line of the example files); an installed wheel has no such
folder, so they refuse there (``checkout_manifests``).
"""
from __future__ import annotations

import json
from pathlib import Path

from builder.core.errors import UserError
from builder.manifest import Manifest
from builder.models.au_detector import AUDetectorConfig
from builder.models.fer.classifier_config import ClassifierConfig
from builder.synthesis.training.config import TrainConfig
from builder.synthesis.training.generator_config import GeneratorTrainConfig
from curation.identity.config import ReferenceConfig
from curation.labelling.feranno.config import FERAnnoTrainConfig

# The source tree this module sits in, when it runs from a checkout (editable install or the repository).
SOURCE_ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = SOURCE_ROOT / "manifests"
SCHEMA_PATH = MANIFESTS / "schema.json"
# --config NAME -> (model, title, file under manifests/) of every generated schema
CONFIGS = {
    "manifest": (Manifest, "fer-synth synthesis manifest", "schema.json"),
    "train-au-adapter": (TrainConfig, "fer-synth train-au-adapter config", "train/schema.json"),
    "classifier": (ClassifierConfig, "fer-synth guide/expert classifier config", "classifiers/schema.json"),
    "train-generator": (GeneratorTrainConfig, "fer-synth train-generator config", "train/generator-schema.json"),
    "train-feranno": (FERAnnoTrainConfig, "fer-synth train-feranno config", "train/feranno-schema.json"),
    "index-reference": (ReferenceConfig, "fer-synth index-reference config", "reference/schema.json"),
    "au-detector": (AUDetectorConfig, "fer-synth AU detector config", "au-detectors/schema.json"),
}
# file -> (model, title), for the checkout this module sits in
SCHEMAS = {MANIFESTS / file: (model, title) for model, title, file in CONFIGS.values()}


def schema_text(model=Manifest, title: str = "fer-synth synthesis manifest") -> str:
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def is_checkout(root: Path) -> bool:
    """True when ``root`` is a fer-synth source checkout: its pyproject.toml names the project, manifests/ exists."""
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return False
    return (root / "manifests").is_dir() and any(line.replace(" ", "") == 'name="fer-synth"'
                                                 for line in text.splitlines())


def checkout_manifests(root: Path = SOURCE_ROOT) -> Path:
    """The ``manifests/`` folder next to the running code; a ``UserError`` when the code is an installed wheel.

    The files are written from the models of the code that runs, so only that code's own checkout is a
    valid target: another checkout found through the working folder may hold different models.
    """
    if not is_checkout(root):
        raise UserError("--write and --check maintain the schema files of a fer-synth source checkout, but this "
                        "build-dataset runs from an installed package, which has no manifests/ folder",
                        file=str(root), fix="print a schema instead (build-dataset schema [--config NAME] > FILE), or run "
                        "--write/--check from a checkout (pip install -e . there, or make schema)")
    return root / "manifests"
