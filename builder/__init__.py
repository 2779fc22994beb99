"""fer-synth builder: manifests, prompts, generation and orchestration.

Importing this package is cheap: torch, diffusers and datasets load only
inside the stages that need them.
"""
from builder.core.version import __version__

__all__ = ["__version__"]
