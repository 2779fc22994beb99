"""Facial action unit (AU) names and the AU sets a manifest can choose from."""
from __future__ import annotations

# Intensities are on the FACS 0-5 scale (0 absent, 5 maximum), as in DISFA.
AU_MIN, AU_MAX = 0.0, 5.0

AU_SETS: dict[str, tuple[str, ...]] = {
    # DISFA intensity AUs (FineFace's 12); the default.
    "disfa12": ("AU1", "AU2", "AU4", "AU5", "AU6", "AU9", "AU12", "AU15", "AU17", "AU20", "AU25", "AU26"),
    # DISFA detection subset.
    "disfa8": ("AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"),
    # BP4D.
    "bp4d12": ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"),
    # OpenGraphAU: 27 main AUs plus 14 left/right variants.
    "opengraphau41": (
        "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU11", "AU12", "AU13", "AU14",
        "AU15", "AU16", "AU17", "AU18", "AU19", "AU20", "AU22", "AU23", "AU24", "AU25", "AU26",
        "AU27", "AU32", "AU38", "AU39",
        "AUL1", "AUR1", "AUL2", "AUR2", "AUL4", "AUR4", "AUL6", "AUR6",
        "AUL10", "AUR10", "AUL12", "AUR12", "AUL14", "AUR14",
    ),
}

DEFAULT_AU_SET = "disfa12"
