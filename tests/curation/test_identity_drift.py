"""The identity_drift stage with the real dlib model on real photos: the same person's near copy is kept with its
similarity, another person is dropped as identity_drift with the score, a face-less edit as no_face."""
from __future__ import annotations

from PIL import Image

from builder.core.records import Record
from builder.core.stage import ShardContext
from builder.manifest import FaceQuality, IdentityCheck
from curation.shard.identity_drift import IdentityDriftFilter
from tests.fixtures.people import THRESHOLD, augment


def test_identity_drift_keeps_the_person_and_drops_another(people, tmp_path):
    (tmp_path / "shard").mkdir()
    people["g1"].save(tmp_path / "source.png")
    edits = {"same": augment(people["g1"], "jpeg"), "other": people["g2"],
             "blank": Image.new("RGB", people["g1"].size, (120, 120, 120))}
    records = []
    for i, (name, image) in enumerate(edits.items()):
        image.save(tmp_path / f"{name}.png")
        records.append(Record(sample_id=f"d-{i}", index=i, label=1, label_name="happy", au=[], prompt="",
                              attributes={"source_image": "source.png"}, negative_prompt="", seed=0,
                              image=f"{name}.png", source="g1.png"))
    stage = IdentityDriftFilter(IdentityCheck(embedder="dlib", min_similarity=THRESHOLD), FaceQuality(min_size=20))
    stage.setup()
    ctx = ShardContext(root=tmp_path, shard=0, staging=tmp_path / "shard", final=tmp_path / "shard")
    same, other, blank = stage.process(records, ctx)
    assert same.drop is None and same.scores["identity_similarity"] >= THRESHOLD
    assert other.drop.reason == "identity_drift" and other.scores["identity_similarity"] < THRESHOLD
    assert f"{other.scores['identity_similarity']:.4f}" in other.drop.detail
    assert blank.drop.reason == "no_face" and "the edit" in blank.drop.detail
    assert stage.meta()["min_similarity"] == THRESHOLD and stage.meta()["backend"] == "dlib"
