"""A decode worker that misbehaves on cue, to test the pipeline's recovery: a path containing
``CRASH`` kills the worker with SIGSEGV (like a decoder bug), one containing ``HANG`` blocks it."""

from __future__ import annotations

import os
import signal
import time

from imgbeddings import pipeline


class _Cue:
    def __init__(self, conn):
        self.conn = conn

    def recv(self):
        msg = self.conn.recv()
        if msg is not None:
            name = os.path.basename(str(msg[1]))
            if "CRASH" in name:
                os.kill(os.getpid(), signal.SIGSEGV)
            if "HANG" in name:
                time.sleep(3600)
        return msg

    def send(self, obj):
        self.conn.send(obj)


def worker_main(conn, spec, mode, max_pixels):
    pipeline._worker_main(_Cue(conn), spec, mode, max_pixels)
