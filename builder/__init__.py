"""fer-synth builder: manifests, prompts, generation and orchestration.

Importing this package is cheap: torch, diffusers and datasets load only
inside the stages that need them.
"""
__version__ = "0.1.0"
