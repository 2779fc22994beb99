"""Which stages a manifest runs, in the order the pipeline fixes."""
from __future__ import annotations

from .manifest import Manifest
from .options import RunOptions
from .stage import GlobalStage, Stage


def shard_stages(manifest: Manifest, options: RunOptions | None = None) -> list[Stage]:
    """Per-shard stages, in order. Construction is cheap; models load in ``setup``."""
    options = options or RunOptions()
    from curation.integrity import IntegrityFilter

    stages: list[Stage] = []
    if manifest.images is not None:
        from .ingest import IngestStage

        stages.append(IngestStage(manifest.images, manifest.listing))
    else:
        from .generate import GenerateStage

        if manifest.prompts.enrich is not None:
            from .enrich import EnrichStage

            stages.append(EnrichStage(manifest.prompts.enrich, manifest.seed))
        stages.append(GenerateStage(manifest.generator, manifest.aus.names, manifest.labels.names, manifest.seed,
                                    trust_remote_code=options.trust_remote_code))
    curation = manifest.curation
    if curation.integrity.enabled:
        stages.append(IntegrityFilter(curation.integrity))
    device = manifest.labelling.device if manifest.labelling is not None else "auto"
    if curation.faces.enabled:
        from curation.quality import FaceQualityFilter

        stages.append(FaceQualityFilter(curation.faces, device))
    if curation.identity_leak is not None:
        from curation.identity.leak import IdentityLeakStage

        stages.append(IdentityLeakStage(curation.identity_leak, device))
    if manifest.labelling is not None:
        from .label import LabelStage

        stages.append(LabelStage(manifest.labelling, manifest.labels.names, manifest.labelling.device,
                                 guide_is_only_labeller=guide_is_only_labeller(manifest),
                                 trust_remote_code=options.trust_remote_code))
    return stages


def global_stages(manifest: Manifest) -> list[GlobalStage]:
    """Stages over all kept records, run by the release after every shard is done, in order."""
    stages: list[GlobalStage] = []
    if manifest.images is not None and manifest.images.top_k_per_class is not None:
        from curation.select import TopKPerClass

        stages.append(TopKPerClass(manifest.images.top_k_per_class))
    curation = manifest.curation
    embeddings = None
    if (curation.dedupe.enabled and curation.dedupe.embedding_similarity is not None) or curation.identities:
        from curation.embeddings import FaceEmbeddings

        embeddings = FaceEmbeddings(curation.embedder)  # one per release: dedupe and identities share vectors
    if curation.dedupe.enabled:
        from curation.dedupe import DedupeStage

        stages.append(DedupeStage(curation.dedupe, embeddings))
    if curation.identities is not None:
        from curation.identities import IdentitiesStage

        stages.append(IdentitiesStage(curation.identities, embeddings, manifest.labels.names))
    if curation.balance is not None:
        from curation.balance import BalanceStage

        stages.append(BalanceStage(manifest.curation.balance, manifest.labels.names))
    return stages


def stage_names(manifest: Manifest) -> list[str]:
    return [stage.name for stage in shard_stages(manifest)]


def guide_is_only_labeller(manifest: Manifest) -> bool:
    """True when the model that guided generation is also the only labeller (its labels confirm themselves)."""
    guidance = manifest.generator.guidance if manifest.generator is not None else None
    labelling = manifest.labelling
    return (guidance is not None and labelling is not None and len(labelling.experts) == 1
            and labelling.feranno is None and labelling.experts[0].model == guidance.classifier)


def guard_warnings(manifest: Manifest) -> list[str]:
    """Warnings about a manifest's set-up that are allowed but weaken the dataset."""
    out = []
    if guide_is_only_labeller(manifest):
        out.append(f"the guide model '{manifest.generator.guidance.classifier}' is also the only labeller: labels "
                   "it steered towards are confirmed by the same model (add an independent expert; the data card "
                   "says so)")
    return out
