"""Manifest schema: the demo validates, the generated JSON schema is current and complete."""
from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from builder.manifest import Manifest
from builder.manifest.label_maps import LABEL_MAPS
from builder.manifest.loader import load_manifest, parse_manifest
from builder.schema import SCHEMA_PATH, SCHEMAS, schema_text
from tests.conftest import DEMO


def test_demo_manifest_loads():
    m = load_manifest(DEMO)
    assert m.total == 28
    assert m.labels.names == LABEL_MAPS["affectnet7"]
    assert m.num_shards() == 4
    assert m.aus.names[6] == "AU12"


@pytest.mark.parametrize("path", sorted(SCHEMAS), ids=lambda p: str(p.relative_to(SCHEMA_PATH.parent)))
def test_schema_files_are_current(path):
    model, title = SCHEMAS[path]
    assert path.read_text() == schema_text(model, title), "run `make schema` (build-dataset schema --write)"


@pytest.mark.parametrize("model", sorted({m for m, _ in SCHEMAS.values()}, key=lambda m: m.__name__),
                         ids=lambda m: m.__name__)
def test_every_schema_field_is_described(model):
    schema = model.model_json_schema()
    undescribed = []
    for name, definition in [(model.__name__, schema), *schema.get("$defs", {}).items()]:
        for field, prop in definition.get("properties", {}).items():
            if not prop.get("description"):
                undescribed.append(f"{name}.{field}")
    assert undescribed == []


def test_demo_validates_against_the_json_schema(demo_data):
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(demo_data, schema)
    with pytest.raises(jsonschema.ValidationError, match="stepz"):
        jsonschema.validate({**demo_data, "generator": {**demo_data["generator"], "stepz": 4}}, schema)


def test_counts_mapping_gives_unlisted_classes_zero():
    m = parse_manifest(DEMO.read_text().replace("counts: 4 ", "counts: {happy: 3, anger: 2} "))
    assert m.labels.per_class() == {"neutral": 0, "happy": 3, "sad": 0, "surprise": 0, "fear": 0, "disgust": 0, "anger": 2}
    assert m.total == 5


@pytest.mark.parametrize("label_map", sorted(LABEL_MAPS))
def test_every_label_map_is_available(label_map, demo_data):
    data = dict(demo_data, labels={"label_map": label_map, "counts": 1})
    data["aus"] = dict(demo_data["aus"], intensity={})
    m = Manifest.model_validate(data)
    assert m.labels.names == LABEL_MAPS[label_map]


def test_identity_ignores_device_and_batch_size_only(demo_data):
    a = Manifest.model_validate(demo_data)
    b = Manifest.model_validate({**demo_data, "generator": {**demo_data["generator"], "device": "cpu", "batch_size": 1}})
    c = Manifest.model_validate({**demo_data, "generator": {**demo_data["generator"], "steps": 5}})
    assert a.identity() == b.identity()
    assert a.identity() != c.identity()



def test_fields_added_later_leave_old_fingerprints_alone(demo_data):
    """A build folder made before curation.identities, embedder, dedupe.embedding_similarity/reference and the
    faces detector existed keeps its fingerprint; setting any of them makes another dataset. The fields are
    marked where they are declared (Annotated[..., ADDED_LATER])."""
    from builder.manifest import added_later_fields
    from builder.run import fingerprint

    base = Manifest.model_validate(demo_data)
    curation = base.identity()["curation"]
    assert "identities" not in curation and "embedder" not in curation
    assert "reference" not in curation["dedupe"] and "detector" not in curation["faces"]
    assert fingerprint(base) == "5ff59527f838" + fingerprint(base)[12:], "demo.yaml's fingerprint before them"
    assert sorted(added_later_fields(Manifest)) == [
        ("annotate",),
        ("curation", "dedupe", "embedding_similarity"), ("curation", "dedupe", "reference"), ("curation", "embedder"),
        ("curation", "faces", "detector"), ("curation", "faces", "detector_model"), ("curation", "faces", "detector_size"),
        ("curation", "identities"), ("edit",), ("edit", "follow_links_outside"), ("generator", "fuse_lora"), ("generator", "guidance", "decoder"), ("generator", "lora"),
        ("images", "follow_links_outside"), ("images", "labels"),
        ("images", "license"),
        ("labelling", "feranno", "dtype")]
    changed = {"identities": {"threshold": 0.9}, "dedupe": {"embedding_similarity": 0.97},
               "faces": {"enabled": False, "detector": "scrfd", "detector_model": "det.onnx"}}
    for key, value in changed.items():
        other = Manifest.model_validate({**demo_data, "curation": {**demo_data.get("curation", {}), key: value}})
        assert fingerprint(other) != fingerprint(base), key

def test_yaml_is_loaded_safely(tmp_path, capsys):
    from builder.cli import main

    path = tmp_path / "evil.yaml"
    path.write_text(DEMO.read_text() + "\nextra: !!python/object/apply:os.system ['echo pwned']\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "YAML syntax error" in err and "pwned" not in err
    assert yaml.safe_load(DEMO.read_text())["name"] == "demo"


@pytest.mark.parametrize("path", sorted(DEMO.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_manifests_validate(path, tmp_path, monkeypatch):
    if {"images", "edit"} & set(yaml.safe_load(path.read_text())):  # reads its photos from out/faces (`make faces`)
        from builder.example_faces import write_example_faces

        monkeypatch.chdir(tmp_path)
        write_example_faces(tmp_path / "out" / "faces")
    from builder.api import load

    manifest = load(path)  # an images source is listed on loading
    assert manifest.total > 0


def test_a_dumped_manifest_validates_to_itself(demo_data):
    """model_dump writes every default; validating it again must not trip checks on fields set by hand."""
    manifest = Manifest.model_validate(demo_data)
    again = Manifest.model_validate(manifest.model_dump(mode="json"))
    assert again == manifest
    faces = {**manifest.curation.faces.model_dump(), "detector_size": 320}
    with pytest.raises(ValueError, match="'detector_size' is for the scrfd detector"):
        Manifest.model_validate({**demo_data, "curation": {**demo_data.get("curation", {}), "faces": faces}})


EXAMPLES = sorted(p for p in SCHEMA_PATH.parent.rglob("*.yaml")
                  if p.read_text().startswith("# yaml-language-server: $schema="))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(SCHEMA_PATH.parent)))
def test_every_shipped_example_fits_its_schema_and_model(path):
    """Each example config names its schema on line 1; it validates against that schema and parses with the
    pydantic model the schema is made from."""
    import yaml

    from builder.core.config import parse_config

    schema_file = (path.parent / path.read_text().splitlines()[0].split("$schema=", 1)[1].strip()).resolve()
    model, _ = SCHEMAS[schema_file]
    data = yaml.safe_load(path.read_text())
    jsonschema.validate(data, json.loads(schema_file.read_text()))
    parse_config(path.read_text(), source=str(path), model=model)


def test_the_examples_cover_every_config_kind():
    kinds = {SCHEMAS[(p.parent / p.read_text().splitlines()[0].split("$schema=", 1)[1].strip()).resolve()][0]
             for p in EXAMPLES}
    assert len(EXAMPLES) >= 8 and len(kinds) >= 5, kinds
