"""Face identity embedders behind one interface: an RGB image and a detected face in, a unit vector out.

``face`` is the dict the pipeline stores in ``record.face`` (``box`` x1, y1,
x2, y2; ``landmarks`` five (x, y) in MTCNN order: left eye, right eye, nose,
left and right mouth corner). Backends:

- ``dlib``: dlib's ResNet face recognition model (128-d) with dlib's own
  5-point shape predictor run inside the MTCNN box; the weights come from the
  installed ``face-recognition-models`` package (CC0), pinned by sha256. The
  package itself is never imported (it needs ``pkg_resources``).
- ``insightface``: an ArcFace ONNX model (e.g. buffalo_l's ``w600k_r50.onnx``,
  512-d) run by onnxruntime on the CPU, the face aligned by insightface's
  ``norm_crop`` from the MTCNN landmarks. No ArcFace weights ship with any
  package: give the path of a downloaded model.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from importlib import metadata
from pathlib import Path

import numpy as np

from builder.core.errors import ModelLoadError
from builder.models.files import first_line

IN_LOADER = "in insightface's model loader"  # where an error without a message came from

BACKENDS = ("dlib", "insightface")

DLIB_PACKAGE = "face-recognition-models"
DLIB_FILES = {  # member of the face-recognition-models 0.3.0 package -> pinned sha256
    "recognition": ("face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
                    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"),
    "landmarks": ("face_recognition_models/models/shape_predictor_5_face_landmarks.dat",
                  "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"),
}


class Embedder(ABC):
    """``embed(rgb, face)`` -> (dim,) float32 with unit L2 norm; ``describe()`` says which weights."""

    name: str
    dim: int

    @abstractmethod
    def embed(self, image: np.ndarray, face: dict) -> np.ndarray:
        """The identity embedding of ``face`` in the RGB uint8 image (H, W, 3)."""

    @abstractmethod
    def describe(self) -> dict:
        """backend, model, path, sha256 (of the embedding weights) and dim, for provenance and mismatch checks."""

    @property
    def sha256(self) -> str:
        return self.describe()["sha256"]


def unit(vector) -> np.ndarray:
    """``vector`` as float32 scaled to unit L2 norm (a zero vector is an error)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("the model returned a zero or non-finite embedding")
    return v / norm


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def dlib_model_files() -> dict[str, Path]:
    """The two dlib weight files of the installed face-recognition-models, checked against their pins."""
    from builder.models.diffusion import file_sha256

    try:
        dist = metadata.distribution(DLIB_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelLoadError(f"the dlib backend needs the '{DLIB_PACKAGE}' package, which is not installed",
                             fix="pip install -c constraints.txt face-recognition-models==0.3.0 "
                                 "dlib-bin==20.0.1.post1 (both are project dependencies)") from None
    out = {}
    for key, (member, sha) in DLIB_FILES.items():
        path = Path(dist.locate_file(member))
        if not path.is_file():
            raise ModelLoadError(f"{DLIB_PACKAGE} {dist.version} has no {member}", file=str(path),
                                 fix="reinstall face-recognition-models==0.3.0")
        actual = file_sha256(path)
        if actual != sha:
            raise ModelLoadError(f"{path.name} has sha256 {actual}, expected {sha}", file=str(path),
                                 fix="reinstall face-recognition-models==0.3.0 (the file is corrupt or another "
                                     "version)")
        out[key] = path
    return out


class DlibEmbedder(Embedder):
    """dlib ResNet (128-d): 5-point shape predictor in the detected box, then ``compute_face_descriptor``."""

    name = "dlib"
    dim = 128

    def __init__(self, num_jitters: int = 0):
        import dlib

        self.files = dlib_model_files()
        self.num_jitters = num_jitters
        self.shape_predictor = dlib.shape_predictor(str(self.files["landmarks"]))
        self.model = dlib.face_recognition_model_v1(str(self.files["recognition"]))
        self._dlib = dlib

    def embed(self, image: np.ndarray, face: dict) -> np.ndarray:
        image = _rgb(image)
        x1, y1, x2, y2 = (int(round(v)) for v in face["box"])
        shape = self.shape_predictor(image, self._dlib.rectangle(x1, y1, x2, y2))
        return unit(self.model.compute_face_descriptor(image, shape, self.num_jitters))

    def describe(self) -> dict:
        return {"backend": self.name, "model": "dlib_face_recognition_resnet_model_v1",
                "path": str(self.files["recognition"]), "sha256": DLIB_FILES["recognition"][1], "dim": self.dim,
                "landmarks_model": {"path": str(self.files["landmarks"]), "sha256": DLIB_FILES["landmarks"][1]},
                "num_jitters": self.num_jitters, "license": "cc0-1.0"}


def insightface_root() -> Path:
    """Where insightface keeps model packs: ``~/.insightface/models``."""
    return Path("~/.insightface/models").expanduser()


def _is_recognition_model(path: Path) -> bool:
    """An ArcFace-shaped ONNX graph: one square NCHW image input (112 or more) and one output (False for a file
    that is not a readable ONNX model)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # protobuf's DecodeError, onnx's and the OS's errors have no common type
        return False
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        return False
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    return len(dims) == 4 and dims[1] == 3 and dims[2] == dims[3] and dims[2] >= 112 and dims[2] % 16 == 0


def resolve_insightface_model(model: str | None, field: str = "model") -> Path:
    """The ONNX file of ``model``: a .onnx path, a folder holding one, or a pack name under insightface's models."""
    if not model:
        raise ModelLoadError(f"the insightface backend needs '{field}': an ArcFace ONNX file or a model pack name",
                             fix=f"set {field} to e.g. ~/.insightface/models/buffalo_l/w600k_r50.onnx")
    given = Path(model).expanduser()
    if given.suffix.lower() == ".onnx":
        if not given.is_file():
            raise ModelLoadError(f"{field} '{model}' does not exist", file=str(given),
                                 fix="download the model (e.g. the buffalo_l pack from the insightface releases) "
                                     "and give the path of its recognition .onnx file")
        return given
    folder = given if given.is_dir() else insightface_root() / model
    files = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
    candidates = [p for p in files if _is_recognition_model(p)]
    if not candidates:
        where = "holds no ArcFace-shaped recognition .onnx" if folder.is_dir() else "does not exist"
        if files:
            where += f" (its .onnx files: {', '.join(p.name for p in files)}; a damaged one does not count)"
        raise ModelLoadError(f"{field} '{model}': {folder} {where}", file=str(folder),
                             fix=f"download the '{Path(model).name}' pack (e.g. buffalo_l from the insightface "
                                 f"releases), unpack it into {insightface_root()}/<name>/, or give the path of the "
                                 "recognition .onnx file (buffalo_l: w600k_r50.onnx)")
    if len(candidates) > 1:
        raise ModelLoadError(f"{field} '{model}': {folder} holds several recognition models "
                             f"({', '.join(p.name for p in candidates)})", file=str(folder),
                             fix="give the path of the one .onnx file to use")
    return candidates[0]


class InsightFaceEmbedder(Embedder):
    """An ArcFace ONNX model via ``insightface.model_zoo`` (CPU), faces aligned by ``face_align.norm_crop``."""

    name = "insightface"

    def __init__(self, model: str | None):
        from insightface.model_zoo import get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        from builder.models.diffusion import file_sha256

        self.path = resolve_insightface_model(model)
        self.model_name = model
        fix = ("give the recognition model of an insightface pack (buffalo_l: w600k_r50.onnx); download it again "
               "if the file is damaged")
        try:
            loaded = get_model(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's parse errors and insightface's assertions have no common type
            raise ModelLoadError(f"cannot load {self.path.name} as an ONNX model: {first_line(exc, IN_LOADER)}",
                                 file=str(self.path), fix=fix) from None
        if not isinstance(loaded, ArcFaceONNX):
            kind = type(loaded).__name__ if loaded is not None else "no model insightface knows"
            raise ModelLoadError(f"{self.path.name} is not a recognition (ArcFace) model: insightface loads it as "
                                 f"{kind}", file=str(self.path), fix=fix)
        loaded.prepare(ctx_id=-1)
        self.model = loaded
        self.dim = self._probe(fix)
        self._sha256 = file_sha256(self.path)

    def _probe(self, fix: str) -> int:
        """Embed one blank face: the graph must run and give one finite (1, dim) vector; returns dim."""
        width, height = self.model.input_size
        try:
            out = np.asarray(self.model.get_feat(np.zeros((height, width, 3), np.uint8)))
        except Exception as exc:  # a graph that parses but fails to run (wrong shapes, unsupported operators)
            raise ModelLoadError(f"{self.path.name} fails on a blank {width}x{height} face: {first_line(exc, IN_LOADER)}",
                                 file=str(self.path), fix=fix) from None
        if out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 2 or not np.isfinite(out).all():
            raise ModelLoadError(f"{self.path.name} gives {out.dtype} {tuple(out.shape)} for a face, not one finite "
                                 "embedding vector (1, dim)", file=str(self.path), fix=fix)
        return int(out.shape[1])

    def embed(self, image: np.ndarray, face: dict) -> np.ndarray:
        from insightface.utils import face_align

        bgr = np.ascontiguousarray(_rgb(image)[..., ::-1])  # insightface works on OpenCV's BGR order
        landmarks = np.asarray(face["landmarks"], dtype=np.float32).reshape(5, 2)
        with warnings.catch_warnings():  # skimage's deprecation of the estimate() insightface calls
            warnings.simplefilter("ignore", FutureWarning)
            crop = face_align.norm_crop(bgr, landmark=landmarks, image_size=self.model.input_size[0])
        return unit(self.model.get_feat(crop))

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name, "path": str(self.path), "sha256": self._sha256,
                "dim": self.dim, "input_size": list(self.model.input_size),
                "input_mean": self.model.input_mean, "input_std": self.model.input_std}


def load_embedder(backend: str, model: str | None = None) -> Embedder:
    """The embedder of ``backend`` ('dlib', or 'insightface' with ``model`` a path or pack name); a clear error
    naming the ``identity`` extra when its libraries are not installed."""
    from builder.core.extras import require_extra

    if backend == "dlib":
        require_extra("identity", "dlib", "face_recognition_models")
        return DlibEmbedder()
    if backend == "insightface":
        require_extra("identity", "insightface", "onnxruntime")
        return InsightFaceEmbedder(model)
    raise ModelLoadError(f"unknown embedding backend '{backend}'", fix=f"use one of: {', '.join(BACKENDS)}")


def expected_sha256(backend: str, model: str | None) -> str:
    """The sha256 an embedder of (backend, model) will report, without loading it (for mismatch checks)."""
    if backend == "dlib":
        return DLIB_FILES["recognition"][1]
    from builder.models.diffusion import file_sha256

    return file_sha256(resolve_insightface_model(model))
