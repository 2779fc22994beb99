"""The 'curation' section: the face checks, the identity-leak gate, dedupe, identities, balance."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from builder.core.config import Strict, fail
from builder.manifest.common import ADDED_LATER


class Integrity(Strict):
    """Drops images that cannot be read or are blank (e.g. black frames from fp16 overflow)."""

    enabled: bool = Field(default=True, description="Run the image integrity check.")
    min_std: float = Field(
        default=2.0,
        ge=0,
        le=128,
        description="Minimum standard deviation of pixel values (0-255 scale) across the image; "
        "flatter images are dropped as 'blank_image'.",
    )


class FaceQuality(Strict):
    """Face checks (MTCNN or SCRFD): one dominant face of a usable size, sharp and well exposed."""

    enabled: bool = Field(default=True, description="Run the face checks (the 'faces' stage).")
    detector: Annotated[Literal["mtcnn", "scrfd"], ADDED_LATER] = Field(default="mtcnn", description="Face detector: 'mtcnn' (the "
                                                "tool's torch port, pinned weights, offline) or 'scrfd' "
                                                "(insightface's SCRFD ONNX model given by detector_model).")
    detector_model: Annotated[str | None, ADDED_LATER] = Field(default=None, min_length=1, description="scrfd only: path of the SCRFD "
                                       ".onnx file with landmarks (e.g. buffalo_l/det_10g.onnx).")
    detector_size: Annotated[int, ADDED_LATER] = Field(default=640, ge=128, le=2048, multiple_of=32, description="scrfd only: side of "
                               "the square the image is letterboxed into for the detector (a model with a fixed "
                               "input size keeps its own).")
    min_score: float = Field(default=0.9, ge=0, le=1, description="Minimum detector score; weaker detections "
                             "are ignored. Typical: 0.9 for MTCNN, 0.5 for SCRFD (its faces score lower).")
    min_size: float = Field(default=32, ge=8, description="Minimum side of the main face's box in pixels "
                            "('small_face' below it).")
    max_other_face: float = Field(default=0.25, ge=0, le=1, description="A second face whose box area is more "
                                  "than this fraction of the main face's makes the image 'multiple_faces'.")
    min_sharpness: float = Field(default=20.0, ge=0, description="Minimum variance of the Laplacian of the "
                                 "aligned grey 112 px face crop ('blurry' below it).")
    min_brightness: float = Field(default=40.0, ge=0, le=255, description="Minimum mean grey level (0-255) of "
                                  "the face crop ('underexposed' below it).")
    max_brightness: float = Field(default=220.0, ge=0, le=255, description="Maximum mean grey level of the face "
                                  "crop ('overexposed' above it).")

    @model_validator(mode="after")
    def _model_for_scrfd(self) -> FaceQuality:
        if self.detector == "scrfd" and self.detector_model is None:
            raise fail("detector_model", "the scrfd detector needs 'detector_model'",
                        "set detector_model: to the path of an SCRFD .onnx file (buffalo_l: det_10g.onnx)",
                        at="detector_model")
        if self.detector == "mtcnn":
            for field in ("detector_model", "detector_size"):  # at its default it is harmless (a dumped manifest)
                if getattr(self, field) != type(self).model_fields[field].default:
                    raise fail("scrfd_only", "'{field}' is for the scrfd detector; MTCNN uses its pinned "
                                "weights at the image's own size", "remove {field}:, or set detector: scrfd",
                                at=field, field=field)
        return self


class IdentityLeak(Strict):
    """Reject images whose face is too close to a real person in a reference index (`build-dataset
    index-reference`)."""

    index: str = Field(min_length=1, description="Folder written by `build-dataset index-reference`; its "
                       "embedding backend embeds the images too.")
    threshold: float | None = Field(default=None, ge=-1, le=1, description="Reject at or above this cosine "
                                    "similarity to the nearest reference face. Give it, or pairs + "
                                    "false_match_rate to calibrate it.")
    pairs: str | None = Field(default=None, min_length=1, description="Verification pairs to calibrate the "
                              "threshold on: a CSV/JSONL of image_a, image_b, same; or a folder person/*.jpg.")
    false_match_rate: float | None = Field(default=None, gt=0, lt=1, description="With pairs: the threshold is "
                                           "the smallest whose false-match rate on impostor pairs is at most this.")
    closest: int = Field(default=20, ge=0, le=1000, description="How many of the closest synthetic/reference "
                         "pairs the stats and the card list.")

    @model_validator(mode="after")
    def _one_threshold(self) -> IdentityLeak:
        calibrated = self.pairs is not None or self.false_match_rate is not None
        if (self.threshold is None) == (not calibrated) or (calibrated and (self.pairs is None
                                                                          or self.false_match_rate is None)):
            raise fail("leak_threshold", "needs either 'threshold' or both 'pairs' and 'false_match_rate'",
                        "give threshold: 0.6, or pairs: PATH with false_match_rate: 0.001")
        return self


class Dedupe(Strict):
    """Remove duplicates inside the dataset: the copy with the higher label confidence (then the lower sample
    index) stays."""

    enabled: bool = Field(default=True, description="Run dedupe (a global stage, after the shards).")
    exact: bool = Field(default=True, description="Drop byte-identical images ('exact_duplicate').")
    near_distance: int | None = Field(default=6, ge=0, le=32, description="Drop images whose 64-bit perceptual "
                                      "hash (or its mirror image's) is within this Hamming distance of a kept "
                                      "one's ('near_duplicate'); null turns it off. Resizing and recompression "
                                      "move the hash by 0-2 bits, a 5 % crop by about 6, another picture by ~32.")
    embedding_similarity: Annotated[float | None, ADDED_LATER] = Field(default=None, gt=0, le=1, description="Drop faces whose identity "
                                               "embedding (curation.embedder) has at least this cosine similarity "
                                               "to a kept face's ('embedding_duplicate'): the same face rendered "
                                               "again, not merely the same person. dlib, measured on real photos: "
                                               "near copies 0.98-1.00, different people 0.81-0.91. Null (default) "
                                               "turns it off; it embeds every face (about 0.3 s each with dlib on a "
                                               "CPU core, cached in the build folder).")
    reference: Annotated[str | None, ADDED_LATER] = Field(default=None, min_length=1, description="A `build-dataset index-reference` "
                                  "output_dir whose images must not appear in this dataset (e.g. an evaluation "
                                  "set): an image with the same bytes as one of them is a 'reference_exact_duplicate'"
                                  ", one within near_distance of one's perceptual hash (or its mirror's) a "
                                  "'reference_near_duplicate', and, with embedding_similarity, a face at least that "
                                  "close to one of its faces a 'reference_embedding_duplicate' (the index must have "
                                  "been built with curation.embedder's model).")


class Balance(Strict):
    """Undersample to a target class distribution, optionally per class x demographic cell."""

    per_class: Annotated[int, Field(ge=0)] | dict[str, Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="Target count per class: one integer for every class, or class name -> "
        "count. Omit for uniform at the smallest class's count.")
    by: list[str] = Field(default_factory=list, description="Prompt axes to balance within each class (class x "
                          "cell); each cell gets an equal share of its class's target.")


class FaceEmbedder(Strict):
    """The face identity embedder of the whole-set stages (embedding dedupe, identities)."""

    backend: Literal["dlib", "insightface"] = Field(default="dlib", description="'dlib': dlib's ResNet (128-d; "
                                                    "weights from the face-recognition-models package, offline). "
                                                    "'insightface': an ArcFace ONNX model given by 'model'.")
    model: str | None = Field(default=None, min_length=1, description="insightface only: path of the ArcFace "
                              ".onnx file (e.g. buffalo_l/w600k_r50.onnx) or a model pack name.")

    @model_validator(mode="after")
    def _model_for_insightface(self) -> FaceEmbedder:
        if self.backend == "insightface" and self.model is None:
            raise fail("embedder_model", "the insightface backend needs 'model'",
                        "set model: to the path of an ArcFace .onnx file (e.g. buffalo_l/w600k_r50.onnx)")
        if self.backend == "dlib" and self.model is not None:
            raise fail("embedder_model", "the dlib backend takes no 'model' (its weights ship with "
                        "face-recognition-models)", "remove model:, or set backend: insightface")
        return self


class Identities(Strict):
    """Group faces into identities (who is depicted) for diversity stats, optionally capping images per
    identity."""

    threshold: float = Field(gt=0, le=1, description="Two faces belong to one identity at or above this cosine "
                             "similarity of their embeddings (curation.embedder). Faces join the most similar "
                             "identity founded by a more confident face, else found their own. Calibrate it for "
                             "the embedder: with dlib, different people measured 0.81-0.91 on real photos.")
    max_per_identity: int | None = Field(default=None, ge=1, description="Keep at most this many images per "
                                         "identity, the most confident first ('identity_cap'); null keeps all.")
    largest: int = Field(default=10, ge=0, le=1000, description="How many of the largest identities the stats "
                         "and the card list.")


class Curation(Strict):
    """Curation stages; the pipeline fixes their order: integrity, faces, identity_leak per shard; then dedupe,
    identities and balance over the whole set."""

    integrity: Integrity = Field(default_factory=Integrity, description="Image integrity check.")
    faces: FaceQuality = Field(default_factory=FaceQuality, description="Face checks (the 'faces' stage).")
    identity_leak: IdentityLeak | None = Field(default=None, description="Identity-leak gate against real "
                                               "reference faces; omit to skip (the card then says so).")
    dedupe: Dedupe = Field(default_factory=Dedupe, description="Exact, near and embedding duplicate removal, "
                           "inside the set and against a reference set.")
    embedder: Annotated[FaceEmbedder, ADDED_LATER] = Field(default_factory=FaceEmbedder, description="Face identity embedder of "
                                   "dedupe.embedding_similarity and identities.")
    identities: Annotated[Identities | None, ADDED_LATER] = Field(default=None, description="Identity clusters and diversity stats, "
                                          "optionally a cap per identity; omit to skip.")
    balance: Balance | None = Field(default=None, description="Class (x demographic cell) balancing; omit to "
                                    "keep the distribution as it comes out of curation.")
