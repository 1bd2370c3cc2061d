"""Moved to tunelab.models.generate (GRPO rollouts and evaluation share it); kept while callers move."""
from ..models.generate import *  # noqa: F401,F403
from ..models.generate import GenerationSettings, Generator  # noqa: F401
