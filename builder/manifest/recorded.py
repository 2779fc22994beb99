"""The manifest a build folder records (``build.json``), read back without touching its sources."""
from __future__ import annotations

from pathlib import Path

from builder.core.build_folder import BUILD_FILE, read_build_file
from builder.core.errors import OutputDirError
from builder.manifest.listing import Listing
from builder.manifest.root import Manifest


def recorded_manifest(out: Path) -> tuple[Manifest, str, dict]:
    """(manifest, fingerprint, the raw record) of the build in ``out``. The images (or edit) listing ``build.json``
    recorded is attached (without paths: the build folder holds copies of the images), so a finished build is
    released and reviewed from any directory, even after its source moved; a record from before listings were
    recorded leaves the manifest unlisted."""
    recorded = read_build_file(out)
    data = recorded["manifest"]  # freshly parsed: safe to edit
    for source in ("images", "edit"):
        if data.get(source):
            data[source].pop("listing_sha256", None)
    try:
        manifest = Manifest.model_validate(data)
    except Exception as exc:  # any validation or type error: the record is of another version
        raise OutputDirError(f"the manifest recorded in {Path(out) / BUILD_FILE} does not load with this version of "
                             f"build-dataset ({type(exc).__name__})", fix="use the version that built it "
                             f"({recorded.get('tool_version', '?')}), or rebuild") from None
    if manifest.collection is not None and "listing" in recorded:
        manifest = manifest.with_listing(Listing(**recorded["listing"]))
    return manifest, recorded["fingerprint"], recorded
