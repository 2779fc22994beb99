"""Which stages a manifest runs, in the order the pipeline fixes."""
from __future__ import annotations

from .manifest import Manifest
from .stage import Stage


def shard_stages(manifest: Manifest) -> list[Stage]:
    """Per-shard stages, in order. Construction is cheap; models load in ``setup``."""
    from curation.integrity import IntegrityFilter

    from .generate import GenerateStage

    stages: list[Stage] = []
    if manifest.prompts.enrich is not None:
        from .enrich import EnrichStage

        stages.append(EnrichStage(manifest.prompts.enrich, manifest.seed))
    stages += [GenerateStage(manifest.generator, manifest.aus.names, manifest.labels.names, manifest.seed)]
    if manifest.curation.integrity.enabled:
        stages.append(IntegrityFilter(manifest.curation.integrity))
    return stages


def stage_names(manifest: Manifest) -> list[str]:
    return [stage.name for stage in shard_stages(manifest)]
