import contextlib
import os

import numpy as np
import pytest
import torch

from motioncache_vllm.config import CacheConfig, GenerationRequest


@pytest.fixture(scope="session", autouse=True)
def shared_vllm_cache(tmp_path_factory):
    """One vLLM cache folder (``VLLM_CACHE_ROOT``) for every engine the session starts, unless
    the caller set one. The servers get a fresh ``XDG_CACHE_HOME`` each (their model folder is
    built anew), and vLLM's cache lives under it by default: a cold one makes every engine start
    inspect the model class in a subprocess that imports vLLM and the model (~5-9 s on 2 cores)
    before it resolves the architecture. vLLM keys that cache entry by the model file's hash."""
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("VLLM_CACHE_ROOT"):
            mp.setenv("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm-cache")))
        yield os.environ["VLLM_CACHE_ROOT"]


@pytest.fixture(scope="session")
def embedded_pipe():
    """The shipped embedded pipeline, loaded once per test session."""
    from motioncache_vllm.models.loading import load_pipeline

    return load_pipeline("embedded")


@pytest.fixture(scope="module")
def tiny_pipe():
    """A tiny random SkyReels-V2 config nobody tuned: 3 blocks, 2x32 heads, 2 frames per block."""
    from motioncache_vllm.data.procedural import ClipGenerator
    from motioncache_vllm.models.latent import fit_linear_latent
    from motioncache_vllm.models.loading import build_pipeline

    torch.manual_seed(0)
    vae = fit_linear_latent(np.stack([ClipGenerator(7, num_frames=9).clip(i).frames for i in range(8)]))
    pipe = build_pipeline(
        vae,
        transformer_overrides=dict(
            num_layers=3, num_attention_heads=2, attention_head_dim=32, ffn_dim=128, num_frame_per_block=2
        ),
        default_num_inference_steps=8,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # in-process engine: ~5 s start-up instead of ~20 s
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the token shim needs a few MiB
    "HF_HUB_OFFLINE": "1",
}


@contextlib.contextmanager
def in_process_engine(root, **llm_kwargs):
    """A real in-process vLLM engine on the embedded model; restores env and torch threads after."""
    import vllm

    from motioncache_vllm.vllm_plugin import build_model_dir

    saved_env = {k: os.environ.get(k) for k in ENGINE_ENV}
    # the CPU worker pins torch to 1 thread and replaces torch.set_num_threads in-process
    saved_threads, saved_setter = torch.get_num_threads(), torch.set_num_threads
    os.environ.update(ENGINE_ENV)
    model_dir = build_model_dir("embedded", root=root)
    llm = vllm.LLM(
        model=str(model_dir),
        runner="pooling",
        enforce_eager=True,
        dtype="float32",
        max_model_len=4096,
        **llm_kwargs,
    )
    try:
        yield llm
    finally:
        del llm
        torch.set_num_threads = saved_setter
        torch.set_num_threads(saved_threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


SERVER_POOL_MIB = 64
SERVER_READY_TIMEOUT_S = 600


SERVER_KEY = "test-key-3b1f"
SERVED_LONG_FRAMES = 33
SERVED_REQUEST = {"prompt": "a red circle moves right slowly", "num_frames": 17, "num_inference_steps": 4, "seed": 3}


class Served:
    """One real ``motioncache serve`` (vLLM API server + engine-core process) for the session."""

    def __init__(self, proc, budget_bytes: int) -> None:
        self.proc, self.url, self.budget_bytes = proc, proc.url, budget_bytes
        self.ready_line, self.log_lines = proc.ready_line, proc.log_lines
        self.auth = {"Authorization": f"Bearer {SERVER_KEY}"}

    def post(self, path: str, body, *, key: str | None = SERVER_KEY, headers: dict | None = None, timeout=300):
        from motioncache_vllm.vllm_plugin.server_process import post_json

        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return post_json(f"{self.url}{path}", body, timeout=timeout, headers={**auth, **(headers or {})})

    def metrics(self) -> dict[str, float]:
        from motioncache_vllm.vllm_plugin.server_process import get_text

        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in get_text(f"{self.url}/metrics").splitlines()
            if line.startswith("motioncache_") and " " in line
        }


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """The one ``motioncache serve`` of the session, shared by test_guard.py, test_serve.py and
    test_videos_api.py (a server start costs ~70 s on 2 cores): api key on, a 64 MiB pool, and a
    memory budget of 1.5 requests of SERVED_LONG_FRAMES frames, so two such requests run one after
    the other (admission is exercised) while two 17-frame ones still run together."""
    pytest.importorskip("vllm")
    from motioncache_vllm.limits import MIB, read_geometry, request_memory
    from motioncache_vllm.models.embedded import EMBEDDED_DIR
    from motioncache_vllm.models.folders import SKYREELS_DF_DEFAULTS
    from motioncache_vllm.vllm_plugin.server_process import ServerError, ServerProcess

    geometry = read_geometry(EMBEDDED_DIR, SKYREELS_DF_DEFAULTS)
    need = request_memory(geometry, num_frames=SERVED_LONG_FRAMES, pool_bounded=True).total
    budget_mib = round(1.5 * need / MIB, 3)
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache"))}
    args = [
        "--cache-pool-mib",
        str(SERVER_POOL_MIB),
        "--api-key",
        SERVER_KEY,
        "--memory-budget-mib",
        str(budget_mib),
        "--max-num-seqs",
        "4",
    ]
    try:
        proc = ServerProcess.start(args, log_path, env=env, ready_timeout_s=SERVER_READY_TIMEOUT_S)
    except ServerError as exc:
        pytest.fail(str(exc))
    try:
        yield Served(proc, int(budget_mib * MIB))
    finally:
        proc.stop()


def interleaved_on_one_pool(pipe, requests: list[GenerationRequest], cache: CacheConfig):
    """``requests`` advanced unit by unit in turn on one pool; their results, the pool, and per
    denoising step the modes its (cond, uncond) streams ran in."""
    from motioncache_vllm.runtime.request import make_pool
    from motioncache_vllm.runtime.stepwise import StepwiseGeneration
    from motioncache_vllm.runtime.stream import ChunkStream

    modes: list[tuple[str, str]] = []
    original = ChunkStream.plan

    def recording(self, hidden, temb):
        out = original(self, hidden, temb)
        if not self.commit:
            modes.append((self.owner[2], self._mode))
        return out

    pool = make_pool(pipe, cache.pool)
    gens = [StepwiseGeneration(pipe, r, cache=cache, pool=pool, request_id=f"r{i}") for i, r in enumerate(requests)]
    ChunkStream.plan = recording
    try:
        while not all(g.done for g in gens):
            for g in gens:
                if not g.done:
                    g.step()
    finally:
        ChunkStream.plan = original
    assert [b for b, _ in modes] == ["cond", "uncond"] * (len(modes) // 2)  # cond plans first, both ways
    return [g.result() for g in gens], pool, list(zip(modes[::2], modes[1::2]))
