"""A test engine: the echo engine, after a pause (``QVL_TEST_SLOW_S`` seconds)."""

import os
import time

from worker.engines.echo import EchoEngine


class SlowEngine(EchoEngine):
    name = "slow-echo"

    def __init__(self, settings):
        super().__init__(family=settings.family or "qwen2-vl")

    def generate(self, turns, *, max_new_tokens, on_text=None):
        pause = float(os.environ.get("QVL_TEST_SLOW_S", "0"))
        steps = max(1, int(pause / 0.1))
        for i in range(steps):  # stream while we "think", as a real model would
            time.sleep(pause / steps)
            if on_text:
                on_text(f"thinking {i}")
        return super().generate(turns, max_new_tokens=max_new_tokens, on_text=None)
