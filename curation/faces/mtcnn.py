"""MTCNN face detection (Zhang et al. 2016) in plain torch: boxes, scores and 5 landmarks.

The three cascaded networks and the detection procedure follow facenet-pytorch
2.6.0 (MIT, Timothy Esler), whose wheel ships the original MTCNN weights as
torch state dicts (``facenet_pytorch/data/{pnet,rnet,onet}.pt``). That
package imports torchvision for its NMS, which cannot be installed beside the
CPU torch here, so the procedure is re-implemented without it; the weights are
read with ``torch.load(weights_only=True)`` (no pickle code runs).

Landmarks are (x, y) in pixels, in the order left eye, right eye, nose, left
mouth corner, right mouth corner (left and right as seen in the image).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PNet(nn.Module):
    """Proposal network: a fully convolutional 12x12 face/non-face scorer with box offsets."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.prelu1(self.conv1(x))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(self.pool1(x)))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).contiguous()  # the Caffe weights are column-major
        x = self.prelu4(self.dense4(x.flatten(1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output network on 48x48 crops: final score, box offsets and 5 landmarks."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


@dataclass(frozen=True)
class Detection:
    """One detected face: box (x1, y1, x2, y2) in pixels, MTCNN score, landmarks (5, 2) as (x, y)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]

    @property
    def size(self) -> float:
        """The shorter side of the box in pixels."""
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best first. ``min`` divides by the smaller area."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    plus = 1.0 if method == "min" else 0.0  # the two conventions MTCNN's reference code mixes
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + plus) * (y2 - y1 + plus)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + plus)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + plus)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        overlap = inter / np.maximum(denom, 1e-12)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
    return boxes


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] += offsets * np.stack([w, h, w, h], axis=1)
    return boxes


def _crops(image: torch.Tensor, boxes: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Crops of ``boxes`` (clipped to the image), area-resized to size x size; also which boxes were usable."""
    h, w = image.shape[-2:]
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x1, y1 = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    x2, y2 = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    ok = (x2 > x1 - 1) & (y2 > y1 - 1)
    crops = [F.interpolate(image[None, :, y1[k] - 1:y2[k], x1[k] - 1:x2[k]], size=(size, size), mode="area")
             for k in np.flatnonzero(ok)]
    empty = image.new_zeros(0, 3, size, size)
    return (torch.cat(crops) if crops else empty), ok


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


class MTCNN:
    """The three-stage MTCNN detector on one RGB image at a time.

    ``min_face`` is the smallest face side searched for (pixels);
    ``thresholds`` are the P-, R- and O-net score thresholds.
    """

    def __init__(self, pnet: PNet, rnet: RNet, onet: ONet, min_face: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = (net.eval().requires_grad_(False).to(self.device)
                                           for net in (pnet, rnet, onet))
        self.min_face, self.thresholds, self.factor = min_face, thresholds, factor

    @classmethod
    def from_files(cls, pnet: str | Path, rnet: str | Path, onet: str | Path, **kwargs) -> MTCNN:
        """Load the three state dicts (``weights_only=True``: tensors only, no pickled code)."""
        nets = []
        for net, path in ((PNet(), pnet), (RNet(), rnet), (ONet(), onet)):
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
            nets.append(net)
        return cls(*nets, **kwargs)

    def _scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / self.min_face
        side = min(h, w) * m
        scales = []
        while side >= 12:
            scales.append(m)
            m *= self.factor
            side *= self.factor
        return scales

    def _proposals(self, image: torch.Tensor) -> np.ndarray:
        """Stage 1: P-net over an image pyramid -> candidate boxes (x1, y1, x2, y2, score)."""
        h, w = image.shape[-2:]
        found = []
        for scale in self._scales(h, w):
            scaled = F.interpolate(image[None], size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            offsets, probs = self.pnet(_normalise(scaled))
            face = probs[0, 1]
            ys, xs = torch.nonzero(face >= self.thresholds[0], as_tuple=True)
            if len(ys) == 0:
                continue
            cells = torch.stack([xs, ys], dim=1).to(torch.float64)
            top_left = torch.floor((2 * cells + 1) / scale)
            bottom_right = torch.floor((2 * cells + 12) / scale)
            boxes = torch.cat([top_left, bottom_right, face[ys, xs, None].double(),
                               offsets[0][:, ys, xs].T.double()], dim=1).cpu().numpy()
            found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 5))
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        refined = _regress(boxes[:, :4], boxes[:, 5:9])
        return _square(np.concatenate([refined, boxes[:, 4:5]], axis=1))

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 image (H, W, 3), best score first."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).to(self.device).permute(2, 0, 1).float()
        boxes = self._proposals(x)
        if len(boxes):  # stage 2: R-net
            crops, ok = _crops(x, boxes, 24)
            boxes = boxes[ok]
            offsets, probs = (t.double().cpu().numpy() for t in self.rnet(_normalise(crops)))
            keep = probs[:, 1] > self.thresholds[1]
            boxes = np.concatenate([boxes[keep, :4], probs[keep, 1:2]], axis=1)
            pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
            boxes = _square(np.concatenate([_regress(boxes[pick, :4], offsets[keep][pick]), boxes[pick, 4:5]], 1))
        if not len(boxes):
            return []
        crops, ok = _crops(x, boxes, 48)  # stage 3: O-net
        boxes = boxes[ok]
        offsets, points, probs = (t.double().cpu().numpy() for t in self.onet(_normalise(crops)))
        keep = probs[:, 1] > self.thresholds[2]
        boxes, offsets, points, scores = boxes[keep, :4], offsets[keep], points[keep], probs[keep, 1]
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        px = w[:, None] * points[:, :5] + boxes[:, 0:1] - 1
        py = h[:, None] * points[:, 5:10] + boxes[:, 1:2] - 1
        boxes = _regress(boxes, offsets)
        pick = nms(boxes, scores, 0.7, method="min")
        height, width = image.shape[:2]
        out = []
        for i in pick:
            x1, y1, x2, y2 = boxes[i]
            box = (max(float(x1), 0.0), max(float(y1), 0.0), min(float(x2), float(width)), min(float(y2), float(height)))
            out.append(Detection(box=box, score=float(scores[i]),
                                 landmarks=tuple((float(px[i, k]), float(py[i, k])) for k in range(5))))
        return out
