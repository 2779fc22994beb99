"""The synthesis manifest: what to make, validated with pydantic v2; pure data, no disk I/O.

One module per section (``prompts``, ``labels`` with ``aus``, ``generation``, ``labelling``, ``curation``,
``images``, ``edit``, ``output``) and the root (``root.Manifest``: cross-section rules and the build's identity). Every
field is described (the descriptions feed ``manifests/schema.json`` and the fixes in error messages); unknown
keys are rejected. Cross-field rules raise errors with a ``fix`` the reader (``builder.core.config``) shows.
A field added after builds existed is marked ``Annotated[type, ADDED_LATER]`` and stays out of the identity
at its default.
"""
from builder.core.config import Strict, fail
from builder.manifest.annotate import (
    Annotate,
    AUDetection,
    CaptionChecks,
    Captions,
    Crop,
    Upscale,
)
from builder.manifest.common import (
    ADDED_LATER,
    BUILTIN_TINY_MODEL,
    RESERVED_COLUMNS,
    AddedLater,
    added_later_fields,
)
from builder.manifest.curation import (
    Balance,
    Curation,
    Dedupe,
    FaceEmbedder,
    FaceQuality,
    Identities,
    IdentityLeak,
    Integrity,
)
from builder.manifest.edit import EditSource, IdentityCheck, IdentityColumn, Injection
from builder.manifest.generation import (
    AUAdapterSpec,
    Generator,
    Guidance,
    Layout,
    LoRASpec,
    Speed,
)
from builder.manifest.images import ImageCollection, ImagesSource, SourceLabels
from builder.manifest.labelling import (
    FERANNO_NAME,
    ExpertSpec,
    FaceCrop,
    FERAnnoSpec,
    Labelling,
)
from builder.manifest.labels import ActionUnits, Labels
from builder.manifest.listing import Listing
from builder.manifest.output import Output
from builder.manifest.prompts import AUCues, Axis, Enrich, Prompts
from builder.manifest.root import NOT_IDENTITY, Manifest

__all__ = [
    "ADDED_LATER", "AUDetection", "Annotate", "CaptionChecks", "Captions", "Crop", "SourceLabels", "Upscale", "BUILTIN_TINY_MODEL", "FERANNO_NAME", "NOT_IDENTITY", "RESERVED_COLUMNS", "AUAdapterSpec",
    "AUCues", "ActionUnits", "AddedLater", "Axis", "Balance", "Curation", "Dedupe", "EditSource", "Enrich", "ExpertSpec",
    "FERAnnoSpec", "FaceCrop", "FaceEmbedder", "FaceQuality", "Generator", "Guidance", "Identities", "IdentityCheck", "IdentityColumn", "ImageCollection", "Injection",
    "IdentityLeak", "ImagesSource", "Integrity", "Labelling", "Labels", "Layout", "Listing", "LoRASpec", "Manifest", "Output",
    "Prompts", "Speed", "Strict", "added_later_fields", "fail",
]
