"""Test-only (tests/train/test_distributed.py puts this directory on PYTHONPATH): with
TUNELAB_TEST_KILL_AT_STEP=N, every training process started by torchrun kills itself with SIGKILL
right after step N (its checkpoint written), as a crash or `kill -9` would: no cleanup runs."""
import os

if os.environ.get("TUNELAB_TEST_KILL_AT_STEP") and "LOCAL_RANK" in os.environ:
    import signal

    import tunelab.train.loop as loop

    _fit, _step = loop.fit, int(os.environ["TUNELAB_TEST_KILL_AT_STEP"])

    def _kill(step, state):
        if step == _step:
            os.kill(os.getpid(), signal.SIGKILL)

    def fit(*args, callbacks=(), **kwargs):
        return _fit(*args, callbacks=(*callbacks, _kill), **kwargs)

    loop.fit = fit
