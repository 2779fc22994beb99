"""Optional parts of the tool and the extra that installs each (``pip install 'fer-synth[EXTRA]'``)."""
from __future__ import annotations

import importlib.util

from builder.core.errors import UserError

EXTRAS = {
    "review": "the FiftyOne review (`build-dataset review`, `release` from FiftyOne tags)",
    "identity": "face identity embeddings: the identity-leak gate, `index-reference`, embedding dedupe, identities",
    "ray": "the Ray executor (`--executor ray`)",
    "eval": "`build-dataset evaluate` and `build-dataset fidelity`",
}


def missing_modules(*modules: str) -> list[str]:
    """Those of ``modules`` that cannot be imported here (found without importing them)."""
    return [m for m in dict.fromkeys(modules) if not _findable(m)]


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a module without a spec
        return False


def require_extra(extra: str, *modules: str) -> None:
    """Refuse, naming the extra to install, when any of ``modules`` cannot be imported."""
    missing = missing_modules(*modules)
    if missing:
        raise UserError(f"{EXTRAS[extra]} needs {', '.join(missing)}, which is not installed",
                        fix=f"pip install 'fer-synth[{extra}]' (or 'fer-synth[all]')")
