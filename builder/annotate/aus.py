"""The 'aus' stage: measure the AU intensities of each aligned face crop with an AU detector.

The detector is an AU detector config (``builder.models.au_detector``: a torch class or an ONNX file, its input
and the AU of each output), loaded once in ``setup``. The crops of a shard (``record.image``, written by the
'align' stage) are read and run in batches of ``BATCH``; each record's ``au`` becomes the detector's outputs
mapped onto the manifest's ``annotate.aus.au_set``, in the set's order (``map_to_set``: by name, both sides
averaged onto a bilateral AU the detector only has sided), on the FACS 0-5 scale, rounded to 6 decimals.
An AU of the set the detector does not measure is None in every record and listed in the stage's meta
(``missing``); it is never invented.

Drop reasons: ``error`` for a crop that cannot be read or a detector output that is not a number (NaN, inf).
Faults of the run (a ``UserError`` such as a record leaving the build folder, a failing disk) are raised, as
the ``Filter`` contract has it.
"""
from __future__ import annotations

from collections.abc import Iterator

from builder.core.errors import is_run_fault
from builder.core.records import Drop, Record
from builder.core.stage import Column, Resources, ShardContext, Stage, device_resources

BATCH = 16
"""Crops per detector call (crops are at the training size, often 512 px: 16 of them are 50 MB as floats)."""
AU_DOC = ("AU intensities 0-5 measured by the detector, one named float per AU of the set; null where it does not "
          "measure that AU")


class AUStage(Stage):
    """AU intensities of each crop, by an AU detector config (see the module docstring)."""

    name = "aus"

    def __init__(self, spec, device: str = "cpu", trust_remote_code: bool = False):
        self.spec = spec
        self.requested_device = device
        self.trust_remote_code = trust_remote_code
        self.detector = None
        self.device = None

    @property
    def resources(self) -> Resources:
        return device_resources(self.requested_device)

    def dataset_columns(self) -> tuple[Column, ...]:
        return (Column("au", f"aus:{self.spec.au_set}", AU_DOC, lambda r, meta: r.au),)

    def setup(self) -> None:
        from builder.models.au_detector import load_au_detector
        from builder.models.diffusion import resolve_device

        self.device = resolve_device(self.requested_device)
        self.detector = load_au_detector(self.spec.model, self.trust_remote_code, device=self.device)

    def meta(self) -> dict:
        from builder.models.au_detector import missing_aus

        d = self.detector
        return {"detector": self.spec.model, "sha256": d.sha256, "detector_aus": list(d.au_names),
                "returns": d.returns, "scale": d.scale if d.returns == "probabilities" else None,
                "au_set": self.spec.au_set, "missing": missing_aus(d.au_names, self.spec.au_set)}

    def runtime(self) -> dict:
        return {"device": self.device, "batch": BATCH}

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        for start in range(0, len(records), BATCH):
            self._batch(records[start:start + BATCH], ctx)
        yield from records

    def _batch(self, records: list[Record], ctx: ShardContext) -> None:
        import numpy as np
        import torch

        from builder.models.au_detector import map_to_set

        crops, readable = [], []
        for record in records:
            try:
                crops.append(self._crop(record, ctx))
            except Exception as exc:  # a bad sample is counted and skipped, never a crash
                if is_run_fault(exc):  # the run's input or disk is at fault, not this sample
                    raise
                record.drop = Drop(self.name, "error", f"{type(exc).__name__}: {exc}")
                continue
            readable.append(record)
        if not readable:
            return
        sizes = {c.shape for c in crops}
        if len(sizes) == 1:
            batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
            values = self.detector.predict(batch)
        else:  # crops of different sizes (not made by one align stage): one at a time
            values = np.concatenate([self.detector.predict(torch.from_numpy(c).permute(2, 0, 1)[None].float() / 255)
                                     for c in crops])
        for record, row in zip(readable, values):
            if not np.isfinite(row).all():
                record.drop = Drop(self.name, "error", "the AU detector returned a value that is not a number "
                                   f"({', '.join(f'{v:g}' for v in row)})")
                continue
            record.au = [None if v is None else round(v, 6)
                         for v in map_to_set(self.detector.au_names, row.tolist(), self.spec.au_set)]

    @staticmethod
    def _crop(record: Record, ctx: ShardContext):
        """The record's crop as an (H, W, 3) uint8 array."""
        import numpy as np

        from builder.core.images import open_rgb8

        if record.image is None:
            raise ValueError("the record has no crop (image)")
        return np.asarray(open_rgb8(ctx.resolve(record.image)))
