"""The 'label' stage: find the face, let the experts judge it, keep, relabel or reject the sample.

Per record: read the image, detect faces with MTCNN (or reuse ``record.face``
from an earlier face stage), align the primary face by its landmarks, run
every expert on the crops of the whole shard in one batch, and apply the
calibration rule (``curation.labelling.calibrate``). Every expert's probabilities and the
verdict are stored in ``record.labelling`` for review, kept or not. A record
without a class (``label`` -1: an existing image) is ``labelled`` with the
pooled class when the thresholds pass. Drop reasons: ``no_face``, ``low_confidence``, ``disagreement``,
``label_mismatch``, and ``error`` for an image that cannot be read.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from builder.core.records import Drop, Record
from builder.core.stage import Column, Resources, ShardContext, Stage, device_resources
from curation.labelling.calibrate import Opinion, decide


class LabelStage(Stage):
    """Expert labelling with face detection in front (see the module docstring)."""

    name = "label"
    head_columns = (
        Column("target_label", "label", "the class the sample was meant to show (prompted); empty for an "
               "existing image", lambda r, meta: _target(r)),
        Column("label_disposition", "string", "confirmed, relabelled, labelled (an existing image) or "
               "reviewer_relabelled", lambda r, meta: r.labelling["disposition"]),
        Column("label_confidence", "float32", "the pooled probability of the final class",
               lambda r, meta: r.labelling["confidence"]),
        Column("label_agreement", "float32", "the weighted share of labellers whose top class is the final one",
               lambda r, meta: r.labelling["agreement"]),
    )

    def dataset_columns(self) -> tuple[Column, ...]:
        """The calibration columns, then each labeller's probabilities over the label map."""
        return self.head_columns + tuple(
            Column(f"probs_{name}", "classes", f"{name}'s probabilities over the label map",
                   lambda r, meta, name=name: r.labelling["experts"][name]) for name in self.spec.labeller_names)
    @property
    def resources(self) -> Resources:
        return device_resources(self.requested_device)

    def __init__(self, spec, label_names, device: str = "cpu", guide_is_only_labeller: bool = False,
                 trust_remote_code: bool = False):
        self.spec = spec
        self.trust_remote_code = trust_remote_code
        self.label_names = tuple(label_names)
        self.requested_device = device
        self.guide_is_only_labeller = guide_is_only_labeller
        self.experts = []
        self.known = {}
        self.detector = None

    def setup(self) -> None:
        from builder.models.diffusion import resolve_device
        from curation.faces.detect import load_detector
        from curation.labelling.experts import load_labellers

        device = resolve_device(self.requested_device)
        self.detector = load_detector(device)
        self.experts = load_labellers(self.spec, device, self.trust_remote_code)
        self.known = {e.name: e.known(self.label_names) for e in self.experts}

    def meta(self) -> dict:
        return {"experts": [e.describe(self.label_names) for e in self.experts], "combine": self.spec.combine,
                "min_confidence": self.spec.min_confidence, "min_agreement": self.spec.min_agreement,
                "relabel": self.spec.relabel, "guide_is_only_labeller": self.guide_is_only_labeller}

    def _crop(self, record: Record, ctx: ShardContext) -> np.ndarray | None:
        from curation.faces.detect import align, image_and_face

        image, face = image_and_face(ctx.resolve(record.image), record, self.detector, self._policy())
        return None if face is None else align(image, face["landmarks"], self.spec.faces.size, self.spec.faces.margin)

    def _policy(self):
        from curation.faces.detect import FacePolicy

        return FacePolicy(self.spec.faces.min_score, self.spec.faces.min_size)

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        import torch

        from curation.faces.detect import per_face

        crops, with_face = per_face(records, self.name, self._policy(), lambda r: self._crop(r, ctx))
        if with_face:
            batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
            predictions = {e.name: e.predict(batch, self.label_names) for e in self.experts}
            weights = {e.name: e.weight for e in self.experts}
            for i, record in enumerate(with_face):
                self._judge(record, {name: p[i] for name, p in predictions.items()}, weights)
        yield from records

    def _judge(self, record: Record, probs: dict[str, np.ndarray], weights: dict[str, float]) -> None:
        opinions = [Opinion.of(probs[name], self.known[name], weights[name]) for name in sorted(probs)]
        target = record.label if record.label >= 0 else None  # -1: an existing image with no class yet
        verdict = decide(opinions, target, self.spec.combine, self.spec.min_confidence, self.spec.min_agreement,
                         self.spec.relabel)
        record.labelling = {
            "target": self.label_names[target] if target is not None else None,
            "final": self.label_names[verdict.label],
            "confidence": round(verdict.confidence, 6), "agreement": round(verdict.agreement, 6),
            "disposition": verdict.disposition, "reason": verdict.reason,
            "pooled": [round(p, 6) for p in verdict.pooled],
            "experts": {name: [round(float(v), 6) for v in probs[name]] for name in sorted(probs)},
        }
        if verdict.disposition in ("relabelled", "labelled"):
            record.label, record.label_name = verdict.label, self.label_names[verdict.label]
        elif verdict.disposition == "rejected":
            record.drop = Drop(self.name, verdict.reason,
                               f"final {self.label_names[verdict.label]} (target "
                               f"{self.label_names[target] if target is not None else 'none'}), "
                               f"confidence {verdict.confidence:.3f}, agreement {verdict.agreement:.3f}")


def _target(record: Record) -> str | None:
    """The prompted class of a labelled record (None for an existing image)."""
    return record.labelling["target"]
