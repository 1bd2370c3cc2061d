"""Moved to tunelab.data.grading (train's rewards and evaluation share it); kept while callers move."""
from ..data.grading import *  # noqa: F401,F403
from ..data.grading import grade, gsm8k_verdicts, math_equal  # noqa: F401
