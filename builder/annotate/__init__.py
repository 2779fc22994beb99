"""Stages that turn existing faces into generator training pairs: align, upscale, AU intensities, captions,
caption checks (the manifest's ``annotate`` section)."""
