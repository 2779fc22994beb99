"""Distances between two sets of image features: Frechet distance, KID, and within-set diversity.

Frechet distance and KID come from torchmetrics (``FrechetInceptionDistance``, ``KernelInceptionDistance``),
given the features themselves: both metrics accept any ``nn.Module`` as their feature extractor, and here it is
the identity on features the encoder already computed (``evaluation.encoders``), so each image is encoded once and
every class's metric reuses the features. torchmetrics' default Inception path would need torch-fidelity and
torchvision; this path needs neither (torchmetrics itself only adds lightning-utilities). clean-fid is not on the
registry here and hard-wires its own Inception/CLIP feature loaders.

- FD (``frechet_distance``): ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)`` from float64 sums; the matrix square
  root's trace is the sum of square roots of the eigenvalues of ``S1 S2`` (torchmetrics' method). FD is biased
  upward for small sets (and when fewer samples than feature dimensions make the covariances singular): compare
  values only at similar set sizes.
- KID (``kernel_distance``): the unbiased MMD^2 estimate with the cubic polynomial kernel
  ``(x.y / dim + 1)^3`` (Binkowski et al. 2018), averaged over ``subsets`` random subsets of ``subset_size``
  samples of each set; mean and standard deviation. Seeded.
- Diversity (``mean_pairwise_distance``): the mean over all pairs i < j of the cosine distance (1 - cos) or the
  Euclidean distance between features; a set larger than ``max_samples`` is subsampled (seeded).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

KID_DEGREE = 3
KID_COEF = 1.0


class Features(nn.Module):
    """The identity as torchmetrics' feature extractor: the metrics are updated with features, not images."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Frechet distance between the Gaussians fitted to features ``x`` (N, D) and ``y`` (M, D); N, M >= 2."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"the Frechet distance needs two samples on each side (got {len(x)} and {len(y)})")
    metric = FrechetInceptionDistance(feature=Features(x.shape[1]), reset_real_features=False)
    metric.update(x.double(), real=True)
    metric.update(y.double(), real=False)
    return float(metric.compute())


def frechet_from_moments(mu1, sigma1, mu2, sigma2) -> float:
    """The Frechet distance of two Gaussians given their means and covariances: the same function
    ``FrechetInceptionDistance.compute`` applies to the moments it estimates."""
    from torchmetrics.image.fid import _compute_fid

    as64 = (lambda a: torch.as_tensor(a, dtype=torch.float64))
    return float(_compute_fid(as64(mu1), as64(sigma1), as64(mu2), as64(sigma2)))


def kernel_distance(x: torch.Tensor, y: torch.Tensor, subset_size: int, subsets: int = 100,
                    seed: int = 0) -> tuple[float, float]:
    """(mean, std) of KID over ``subsets`` random subsets of ``subset_size`` samples of ``x`` and of ``y``."""
    from torchmetrics.image.kid import KernelInceptionDistance

    if subset_size < 2 or subset_size > min(len(x), len(y)):
        raise ValueError(f"KID subset size {subset_size} must be between 2 and the smaller set ({min(len(x), len(y))})")
    with warnings.catch_warnings():  # "will save all extracted features in buffer": they are in memory already
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=Features(x.shape[1]), subsets=subsets, subset_size=subset_size,
                                         degree=KID_DEGREE, coef=KID_COEF)
    metric.update(x.double(), real=True)
    metric.update(y.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # the subsets are drawn with torch's global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def mean_pairwise_distance(x: torch.Tensor, metric: str = "cosine", max_samples: int = 2000,
                           seed: int = 0) -> float | None:
    """Mean distance over the pairs of rows of ``x`` ('cosine': 1 - cosine similarity, 'l2': Euclidean); None
    for fewer than two rows. Above ``max_samples`` rows, a seeded random subset of that many is used."""
    if len(x) < 2:
        return None
    x = x.double()
    if len(x) > max_samples:
        generator = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(len(x), generator=generator)[:max_samples]]
    if metric == "cosine":
        unit = nn.functional.normalize(x, dim=1)
        distances = 1 - unit @ unit.T
    elif metric == "l2":
        distances = torch.cdist(x, x)
    else:
        raise ValueError(f"unknown diversity metric {metric!r} (cosine or l2)")
    n = len(x)
    return float((distances.sum() - distances.diagonal().sum()) / (n * (n - 1)))  # the diagonal is ~0
