"""Curation stages: each judges records and says why it drops any (see builder.core.stage)."""
