"""A pool of CPU processes joined in one gloo process group, kept alive across tests.

Spawning processes and forming a group costs seconds; the parity tests send many cases
to one pool instead of spawning per case. ``pool.run(fn, *args)`` calls the importable
function ``fn(rank, world_size, *args)`` on every rank and returns the results by rank.
"""

import os
import tempfile
import traceback

import torch.multiprocessing as mp


def _serve(rank, world_size, init_file, inbox, outbox):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        while (job := inbox.get()) is not None:
            fn, args = job
            try:
                outbox.put(("ok", fn(rank, world_size, *args)))
            except Exception:  # report the failure to the test instead of hanging it
                outbox.put(("error", traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class GlooPool:
    def __init__(self, world_size: int):
        ctx = mp.get_context("spawn")
        self.world_size = world_size
        fd, init_file = tempfile.mkstemp(prefix="gloo-")
        os.close(fd)
        os.unlink(init_file)  # the file store creates it; a stale one would confuse it
        self.inboxes = [ctx.Queue() for _ in range(world_size)]
        self.outboxes = [ctx.Queue() for _ in range(world_size)]
        self.procs = [
            ctx.Process(target=_serve, args=(r, world_size, init_file, self.inboxes[r],
                                             self.outboxes[r]), daemon=True)
            for r in range(world_size)
        ]
        for p in self.procs:
            p.start()

    def run(self, fn, *args, timeout=300):
        for box in self.inboxes:
            box.put((fn, args))
        results = [box.get(timeout=timeout) for box in self.outboxes]
        errors = [payload for status, payload in results if status == "error"]
        if errors:
            raise RuntimeError("a rank failed:\n" + errors[0])
        return [payload for _, payload in results]

    def close(self):
        for box in self.inboxes:
            box.put(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
