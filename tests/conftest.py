import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Test helpers (reference.py, gloo_pool.py, ...) import as top-level modules, also in
# spawned children, which inherit sys.path.
sys.path.insert(0, str(Path(__file__).parent))

# The node's copies of prepared data (workers.node_cache) for this test session: set
# before any Ray starts, so its workers and every subprocess inherit it (a spawned child
# that imports this file keeps its parent's).
if "DOTSIM_NODE_CACHE" not in os.environ:
    os.environ["DOTSIM_NODE_CACHE"] = tempfile.mkdtemp(prefix="dotsim-node-cache-")
    atexit.register(shutil.rmtree, os.environ["DOTSIM_NODE_CACHE"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The fast tier (-m "not slow") must not start Ray: a test that does is marked slow."""
    unmarked = [item.nodeid for item in items
                if ("ray_local" in getattr(item, "fixturenames", ())
                    or item.get_closest_marker("ray")) and not item.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError("tests that start Ray must be marked slow: "
                                + ", ".join(unmarked))


@pytest.fixture(scope="session")
def gloo_pool():
    """``gloo_pool(world_size)``: a shared GlooPool per world size, closed at the end."""
    from gloo_pool import GlooPool

    pools = {}

    def get(world_size):
        if world_size not in pools:
            pools[world_size] = GlooPool(world_size)
        return pools[world_size]

    yield get
    for pool in pools.values():
        pool.close()


SMALL_CORPUS = {"speakers": (4, 2, 2), "clips_per_word_speaker": 1}


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory):
    """A small prepared synthetic corpus (35 words x 4/2/2 speakers), made once."""
    from orchestrator.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "small"
    prepare(None, out, seed=0, progress=False, corpus_sizes=SMALL_CORPUS)
    return out


@pytest.fixture(scope="session")
def speech_commands(tmp_path_factory):
    """A small Speech Commands v2 folder (WAV files and the split lists: 35 words said by
    2/1/1 speakers), made once; a test that changes it works on a copy (``copy_of``)."""
    from workers import synth

    corpus = synth.make_corpus(3, speakers=(2, 1, 1), clips_per_word_speaker=1)
    return synth.write_speech_commands(tmp_path_factory.mktemp("sc") / "sc", corpus)


def copy_of(folder: Path, where: Path) -> Path:
    """A copy of ``folder`` at ``where``, to change without touching a shared fixture."""
    shutil.copytree(folder, where)
    return where


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API on 127.0.0.1 for the session (moto in server mode, in a thread of this
    process), reached the way a user reaches MinIO or another S3-compatible store: through
    AWS_ENDPOINT_URL and credentials in the environment, which Ray's processes inherit."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request else
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}",
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()
    _restore(saved)


S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
          "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")


def _restore(saved: dict) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory, s3_endpoint):
    """One local Ray for the whole test session: 2 CPUs, no dashboard, an isolated HOME
    and token auth off (ray.init would otherwise write a token into the real HOME). Its
    processes see the session's S3 endpoint (s3_endpoint)."""
    import ray

    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_AUTH_MODE")}
    os.environ["HOME"] = str(home)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    _restore(saved)


@pytest.fixture
def said():
    """The messages of the ``dotsim`` logger during the test (the CLI, once it has run in
    this process, keeps them from propagating to pytest's own capture)."""
    import logging

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger, handler = logging.getLogger("dotsim"), Collect(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)
