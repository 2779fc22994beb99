"""InsightFace's SCRFD face detector behind MTCNN's interface: an RGB image in, ``Detection`` s out.

The 'faces' stage uses it when the manifest sets ``curation.faces.detector:
scrfd`` and gives ``detector_model``, the path of an SCRFD ONNX file with
landmark outputs (e.g. ``det_10g.onnx`` of insightface's buffalo_l pack).
insightface's own ``SCRFD`` class (``insightface.model_zoo``) runs it by
onnxruntime and decodes its outputs: it letterbox-resizes the image into
``size`` x ``size`` (a model with a fixed input size keeps its own), and its
five keypoints are in MTCNN's order (left eye, right eye, nose, left and right
mouth corner), so ``record.face`` means the same with either detector. Scores
are SCRFD's own: faces usually score 0.5-0.9, lower than MTCNN's. No SCRFD
weights ship with any package; the file's sha256 is recorded for provenance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from builder.core.errors import ModelLoadError
from builder.models.files import first_line
from curation.faces.mtcnn import Detection

IN_LOADER = "in insightface's model loader"  # where an error without a message came from

FIELD = "curation.faces.detector_model"
FIX = ("download the buffalo_l pack from the insightface releases, unpack it, and set " + FIELD
       + " to the path of its detector, det_10g.onnx (check the licence: insightface's packs are for "
       "non-commercial research)")
KEYPOINT_OUTPUTS = (9, 15)  # score, box and keypoint maps for 3 or 5 strides; 6 and 10 have no keypoints


def providers(device: str) -> tuple[list[str], int]:
    """onnxruntime execution providers and insightface's ``ctx_id`` for ``device`` ('cuda[:n]' or 'cpu')."""
    import onnxruntime

    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"], index
    return ["CPUExecutionProvider"], -1


class SCRFDDetector:
    """``detect(rgb) -> list[Detection]`` (best score first) with an SCRFD ONNX model run by insightface."""

    def __init__(self, model: str | Path | None, device: str = "cpu", size: int = 640, threshold: float = 0.5):
        from insightface.model_zoo import get_model
        from insightface.model_zoo.scrfd import SCRFD

        from builder.models.diffusion import file_sha256

        if not model:
            raise ModelLoadError(f"{FIELD} is not set", fix=FIX)
        self.path = Path(model).expanduser()
        if not self.path.is_file():
            raise ModelLoadError(f"{FIELD} '{model}' does not exist" if not self.path.exists() else
                                 f"{FIELD} '{model}' is not a file", file=str(self.path), fix=FIX)
        chosen, ctx_id = providers(device)
        try:
            loaded = get_model(str(self.path), providers=chosen)
        except Exception as exc:  # onnxruntime's and onnx's parse errors, insightface's assertions: no common type
            raise ModelLoadError(f"cannot load {self.path.name} as an ONNX model: {first_line(exc, IN_LOADER)}",
                                 file=str(self.path), fix=FIX) from None
        outputs = len(loaded.session.get_outputs()) if isinstance(loaded, SCRFD) else 0
        if not isinstance(loaded, SCRFD) or outputs not in KEYPOINT_OUTPUTS:
            kind = type(loaded).__name__ if loaded is not None else "no model insightface knows"
            what = (f"an SCRFD model without landmark outputs ({outputs} outputs)" if isinstance(loaded, SCRFD)
                    else f"not an SCRFD face detector (insightface loads it as {kind})")
            raise ModelLoadError(f"{self.path.name} is {what}; the faces stage needs SCRFD with 5 landmarks "
                                 f"({' or '.join(map(str, KEYPOINT_OUTPUTS))} outputs)", file=str(self.path),
                                 fix=FIX)
        loaded.prepare(ctx_id=ctx_id, input_size=(size, size), det_thresh=threshold)
        self.model = loaded
        self.threshold = threshold
        self._probe()
        self.sha256 = file_sha256(self.path)

    def _probe(self) -> None:
        """Run the graph on one blank input and check SCRFD's output shapes (per stride: scores, boxes and
        keypoints for every anchor of every cell) before insightface's decoding sees them: a graph with SCRFD's
        output count but other shapes fails here, at set-up, as bad input naming the file, instead of on (or
        exhausting memory at) the first image of a shard."""
        model = self.model
        side = int(model.input_size[0])
        try:
            outputs = model.session.run(model.output_names,
                                        {model.input_name: np.zeros((1, 3, side, side), np.float32)})
        except Exception as exc:  # onnxruntime's run errors have no common type
            raise ModelLoadError(f"{self.path.name} fails on a blank {side}x{side} image: {first_line(exc, IN_LOADER)}",
                                 file=str(self.path), fix=FIX) from None
        fmc = model.fmc
        for idx, stride in enumerate(model._feat_stride_fpn):
            rows = (side // stride) ** 2 * model._num_anchors
            for group, (what, width) in enumerate((("scores", 1), ("boxes", 4), ("landmarks", 10))):
                name, out = model.output_names[idx + group * fmc], np.asarray(outputs[idx + group * fmc])
                shape = out.shape[1:] if model.batched and out.ndim == 3 else out.shape
                if tuple(shape) != (rows, width):
                    raise ModelLoadError(
                        f"{self.path.name} is not an SCRFD detector: output '{name}' has shape {tuple(out.shape)} "
                        f"for a {side}x{side} image, SCRFD's stride-{stride} {what} are ({rows}, {width})",
                        file=str(self.path), fix=FIX)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 image (H, W, 3), best score first."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
        bgr = np.ascontiguousarray(image[..., ::-1], dtype=np.uint8)  # insightface works on OpenCV's BGR order
        boxes, points = self.model.detect(bgr, max_num=0)
        return [Detection(box=tuple(float(v) for v in box[:4]), score=float(box[4]),
                          landmarks=tuple((float(x), float(y)) for x, y in kps))
                for box, kps in zip(boxes, points)]

    def describe(self) -> dict:
        """Provenance: detector, model file name and sha256, the input size it runs at."""
        return {"detector": "scrfd", "detector_model": self.path.name, "detector_sha256": self.sha256,
                "detector_size": list(self.model.input_size)}
