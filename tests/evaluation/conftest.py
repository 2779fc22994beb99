"""The evaluation fixtures of ``test_evaluate`` (a real build of tinted photos, the photos, tiny backbones, one
torch thread) for the other test modules here; each module builds its own (module scope)."""
from tests.evaluation.test_evaluate import backbones, built, one_thread, portraits  # noqa: F401
