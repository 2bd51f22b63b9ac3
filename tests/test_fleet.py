"""``motioncache serve --workers 2`` on a real local Ray cluster of separate processes.

The fleet's video routes are the single server's (``vllm_plugin.videos_api``): the
synchronous ``/v1/videos/generations`` here, and OpenAI's job routes for extensions.

One cluster for the module (``ray.cluster_utils.Cluster``: a head node with no CPUs and two
worker nodes of one CPU each, so the two engine workers land on two simulated nodes), one
fleet server joined to it (``--ray-address``). Faults are real: the test ``kill -9``s the
pid that ``GET /v1/workers`` shows, mid-request.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

from motioncache_vllm.vllm_plugin.server_process import (  # noqa: E402
    ServerError,
    ServerProcess,
    get_text,
    post_json,
)

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 420
POOL_MIB = 4
SESSION_MIB = 24  # ~2 finished 17-frame videos (9.7 MB of state each): the 50 queued ones evict them
# 17 frames = 2 chunks of the embedded model; per-request policy "none": exact against generate_video
BASE = dict(num_frames=17, num_inference_steps=2, cache={"policy": "none"})
SYNC = "/v1/videos/generations"


def get_json(url: str):
    return json.loads(get_text(url))


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # no dashboard, as the fleet's own private cluster (fleet.server.init_ray): its nine module
    # processes cost ~3 s of the cluster's start and run beside the fleet all through the module
    c = Cluster(
        initialize_head=True,
        head_node_args=dict(num_cpus=0, object_store_memory=80 * 2**20, include_dashboard=False),
    )
    for _ in range(2):
        c.add_node(num_cpus=1, object_store_memory=120 * 2**20)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def fleet(cluster, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("fleet") / "fleet.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    try:
        server = ServerProcess.start(
            [
                "--workers",
                "2",
                "--ray-address",
                cluster.address,
                "--cache-pool-mib",
                str(POOL_MIB),
                "--fleet-config",
                # session half-life 1 s: the score's age term evicts the first video (extended twice,
                # so with hits) while the 50 queued ones finish; test_session_eviction.py has the order
                json.dumps(
                    {
                        "max_attempts": 2,
                        "info_interval_s": 0.2,
                        "session_budget_mib": SESSION_MIB,
                        "session_half_life_s": 1.0,
                    }
                ),
            ],
            log_path,
            env=env,
            ready_timeout_s=READY_TIMEOUT_S,
        )
    except ServerError as exc:
        pytest.fail(str(exc))
    try:
        assert "with 2 Ray workers" in server.ready_line
        yield server.url
    finally:
        server.stop()


def test_workers_listed_on_two_nodes(fleet):
    rows = get_json(f"{fleet}/v1/workers")["data"]
    assert [r["id"] for r in rows] == [0, 1]
    assert all(r["state"] == "ready" for r in rows)
    assert len({r["pid"] for r in rows}) == 2 and all(r["pid"] != os.getpid() for r in rows)
    assert len({r["node_id"] for r in rows}) == 2  # one worker per simulated node (1 CPU each)
    for r in rows:
        assert r["torch_threads"] == 1  # num_cpus=1 -> one pinned torch thread
        assert r["pool_budget_bytes"] == POOL_MIB * 2**20
        assert r["gpus"] == []  # no GPU here: the num_gpus=1 placement is not exercised
    health = get_json(f"{fleet}/health")
    assert health == {"ready_workers": 2, "workers": 2}


def test_concurrent_requests_all_finish_with_single_engine_frames(fleet, embedded_pipe):
    from motioncache_vllm.config import CacheConfig, GenerationRequest
    from motioncache_vllm.runtime.generate import generate_video

    requests = [
        dict(BASE, prompt=p, seed=s)
        for s, p in enumerate(
            [
                "a red circle moves right",
                "a blue square moves left",
                "two dots bounce",
                "a green bar slides down",
                "a static grey scene",
                "a yellow ball falls",
            ]
        )
    ]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: post_json(f"{fleet}{SYNC}", r, timeout=600), requests))
    assert all(status == 200 for status, _ in answers), answers
    workers = {body["stats"]["fleet"]["worker"] for _, body in answers}
    assert workers == {0, 1}  # routed to both
    for request, (_, body) in zip(requests, answers):
        gen = {k: v for k, v in request.items() if k != "cache"}
        ref = generate_video(embedded_pipe, GenerationRequest(**gen), cache=CacheConfig.decode(policy="none"))
        assert body["frames_sha256"] == hashlib.sha256(ref.frames.tobytes()).hexdigest(), request["prompt"]
        assert body["num_frames"] == 17 and body["stats"]["fleet"]["attempts"] == 1


def test_bad_requests_get_4xx_and_the_fleet_keeps_serving(fleet):
    bad = [
        ({"prompt": "x", "num_frames": 16}, 400, "4k+1"),
        ({"prompt": "x", "cache": {"policy": "nope"}}, 400, "nope"),
        ({"prompt": "x", "colour": "red"}, 400, "colour"),
        ({"num_frames": 17}, 400, "prompt"),
        (b"{not json", 400, "not JSON"),
        ([1, 2], 400, "JSON object"),
        ({"prompt": "x", "model": "other"}, 404, "other"),
        ({"prompt": "x", "stream": "yes"}, 400, "stream"),
    ]
    for body, status, needle in bad:
        got, answer = post_json(f"{fleet}{SYNC}", body)
        assert got == status, (body, answer)
        assert needle in answer["error"]["message"] and answer["error"]["code"] == status
    status, body = post_json(f"{fleet}{SYNC}", dict(BASE, prompt="still serving", num_frames=9))
    assert status == 200 and body["num_frames"] == 9


SESSION = {}  # what the continuation tests share: the first video's id, the continuation's sha


def _continuation_reference(pipe, first: dict, more: dict) -> str:
    """frames_sha256 of ``first`` extended by ``more``, made here by the runtime (no fleet)."""
    from motioncache_vllm.config import CacheConfig, GenerationRequest
    from motioncache_vllm.runtime.request import resolve
    from motioncache_vllm.runtime.snapshot import VideoPlan
    from motioncache_vllm.runtime.stepwise import PlanGeneration

    gen = {k: v for k, v in first.items() if k != "cache"}
    plan = VideoPlan.of(resolve(pipe, GenerationRequest(**gen)))
    plan = plan.extended(more["prompt"], plan.num_frames + more["num_frames"], more["seed"])
    run = PlanGeneration(pipe, plan, None, cache=CacheConfig.decode(policy="none"))
    while not run.done:
        run.step()
    return hashlib.sha256(run.result().frames.tobytes()).hexdigest()


def extend_and_wait(fleet: str, body: dict) -> dict:
    """``POST /v1/videos/extensions`` (a job), polled until it ends; the job object."""
    status, job = post_json(f"{fleet}/v1/videos/extensions", body)
    assert status == 200, job
    deadline = time.monotonic() + 600
    while job["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = get_json(f"{fleet}/v1/videos/{job['id']}")
    assert job["status"] == "completed", job
    return job


def test_extended_video_reuses_its_state_on_any_worker(fleet, embedded_pipe):
    first = dict(BASE, prompt="a red circle moves right", seed=11)
    status, video = post_json(f"{fleet}{SYNC}", first, timeout=600)
    assert status == 200, video
    # 16 more frames = one more chunk
    more = dict(
        video={"id": video["id"]}, prompt="then it turns around", num_frames=16, seed=5, cache={"policy": "none"}
    )
    # two at once: the router puts them on both workers; each continues the stored state
    with ThreadPoolExecutor(2) as pool:
        a, b = (job["motioncache"] for job in pool.map(lambda r: extend_and_wait(fleet, r), [more, more]))
    assert {a["stats"]["fleet"]["worker"], b["stats"]["fleet"]["worker"]} == {0, 1}
    assert a["frames_sha256"] == b["frames_sha256"]  # deterministic, whichever worker
    assert a["frames_sha256"] == _continuation_reference(embedded_pipe, first, more)
    assert a["frame_sha256"][:17] == video["frame_sha256"]  # the earlier frames unchanged
    for ext in (a, b):
        assert ext["num_frames"] == 33 and ext["stats"]["fleet"]["session"] == "hit"
        assert ext["stats"]["resumed_chunks"] == 2  # the first video's chunks were not recomputed
        # units run: the one new chunk (steps + commit), not the video's three chunks
        assert len(ext["stats"]["engine_steps"]) == BASE["num_inference_steps"] + 1
    SESSION.update(first=first, more=more, id=video["id"], sha=a["frames_sha256"])
    status, answer = post_json(f"{fleet}/v1/videos/extensions", dict(more, video={"id": "video_nope"}))
    assert status == 404 and "video_nope" in answer["error"]["message"]


def test_queued_requests_with_a_small_budget_all_finish_within_budget(fleet):
    requests = [dict(prompt=f"shape {i} moves", num_frames=9, num_inference_steps=1, seed=i) for i in range(50)]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: post_json(f"{fleet}{SYNC}", r, timeout=900), requests))
    assert all(status == 200 for status, _ in answers), [b for s, b in answers if s != 200][:2]
    budget = POOL_MIB * 2**20
    for _, body in answers:
        assert body["stats"]["policy"] == "motion"  # the server's default policy, pooled
        assert body["stats"]["pool_budget_bytes"] == budget and body["stats"]["pool_peak_bytes"] <= budget
    # /v1/workers shows each worker's info as of its last refresh (every info_interval_s): on a
    # loaded machine the last answers arrive before it (44 of 50 seen once)
    deadline = time.monotonic() + 30
    while True:
        rows = get_json(f"{fleet}/v1/workers")["data"]
        if sum(r["videos_done"] for r in rows) >= len(requests) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(r["pool_peak_bytes"] <= budget for r in rows)
    assert sum(r["videos_done"] for r in rows) >= len(requests)


def test_evicted_video_is_made_again_when_extended(fleet):
    """The queued requests filled the fleet-wide session budget: the first video's state is
    gone; extending it makes it again from its plan, with the same frames."""
    assert SESSION, "runs after test_extended_video_reuses_its_state_on_any_worker"
    metrics = get_text(f"{fleet}/metrics")
    evictions = [line for line in metrics.splitlines() if line.startswith("motioncache_fleet_session_evictions_total")]
    assert evictions and float(evictions[0].split()[-1]) > 0
    body = extend_and_wait(fleet, SESSION["more"])["motioncache"]
    assert body["stats"]["fleet"]["session"] == "regenerated"
    assert body["frames_sha256"] == SESSION["sha"]
    assert len(body["stats"]["engine_steps"]) == 3 * (BASE["num_inference_steps"] + 1)  # all three chunks


def _kill_when_checkpointed(fleet: str, request_id_holder: dict, min_chunks: int = 1) -> dict:
    """Poll /v1/workers; kill -9 the worker running the request once it has a checkpoint."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for row in get_json(f"{fleet}/v1/workers")["data"]:
            for req in row["requests"]:
                if req["chunks"] >= min_chunks:
                    os.kill(row["pid"], signal.SIGKILL)
                    request_id_holder.update(
                        worker=row["id"], pid=row["pid"], chunks=req["chunks"], killed_at=time.monotonic()
                    )
                    return request_id_holder
        time.sleep(0.05)
    raise AssertionError("the request never reached a checkpoint")


def test_killed_worker_request_resumes_elsewhere_with_equal_frames(fleet):
    request = dict(BASE, prompt="a red circle moves right slowly", num_frames=33, num_inference_steps=4, seed=7)
    killed: dict = {}
    killer = threading.Thread(target=_kill_when_checkpointed, args=(fleet, killed))
    killer.start()
    t0 = time.monotonic()
    status, body = post_json(f"{fleet}{SYNC}", request, timeout=900)
    killer.join()
    assert status == 200, body
    info = body["stats"]["fleet"]
    print("killed", killed, "fleet stats", info, f"request took {time.monotonic() - t0:.1f}s")
    assert info["attempts"] == 2 and info["worker"] != killed["worker"]
    assert info["resumed_at_chunk"] and info["resumed_at_chunk"][0] >= 1  # not from scratch
    assert len(info["recovery_s"]) == 1
    # the no-fault run of the same request on the surviving worker: the same frames
    status, again = post_json(f"{fleet}{SYNC}", request, timeout=900)
    assert status == 200 and again["stats"]["fleet"]["attempts"] == 1
    assert again["frames_sha256"] == body["frames_sha256"]
    rows = {r["id"]: r for r in get_json(f"{fleet}/v1/workers")["data"]}
    assert rows[killed["worker"]]["deaths"] == 1
    metrics = get_text(f"{fleet}/metrics")
    assert "motioncache_fleet_resumed_from_checkpoint_total 1.0" in metrics


def _wait_ready(fleet: str, workers: int = 2, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if get_json(f"{fleet}/health").get("ready_workers") == workers:
            return
        time.sleep(0.5)
    raise AssertionError(f"the fleet did not get back to {workers} ready workers")


def test_attempts_exhausted_gives_a_clear_error_and_the_fleet_keeps_serving(fleet):
    """max_attempts is 2 here: the worker of each attempt is killed (kill -9, at a checkpoint);
    the client gets a 500 naming both attempts, and the fleet serves the next request once
    Ray has restarted a worker."""
    _wait_ready(fleet)  # the previous test's killed worker is back
    before = {r["id"]: r["deaths"] for r in get_json(f"{fleet}/v1/workers")["data"]}
    request = dict(BASE, prompt="a blue square moves left", num_frames=33, num_inference_steps=4, seed=11)
    killed: list[dict] = []

    def kill_each_attempt() -> None:
        deadline = time.monotonic() + 600
        while len(killed) < 2 and time.monotonic() < deadline:
            for row in get_json(f"{fleet}/v1/workers")["data"]:
                for req in row["requests"]:
                    if req["attempt"] == len(killed) and req["chunks"] >= 1 and row["state"] == "ready":
                        os.kill(row["pid"], signal.SIGKILL)
                        killed.append(dict(worker=row["id"], attempt=req["attempt"]))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_each_attempt)
    killer.start()
    status, body = post_json(f"{fleet}{SYNC}", request, timeout=900)
    killer.join()
    assert [k["attempt"] for k in killed] == [0, 1], killed
    assert status == 500, body
    message = body["error"]["message"]
    assert "did not finish" in message and "each of 2 attempts" in message, message
    assert "Traceback" not in message
    metrics = get_text(f"{fleet}/metrics")
    assert "motioncache_fleet_unavailable_total 1.0" in metrics
    # the fleet keeps serving: the next request waits for a restarted worker and finishes
    status, again = post_json(f"{fleet}{SYNC}", dict(request, num_frames=17), timeout=900)
    assert status == 200 and again["stats"]["fleet"]["attempts"] == 1, again
    rows = {r["id"]: r for r in get_json(f"{fleet}/v1/workers")["data"]}
    assert sum(rows[i]["deaths"] - before[i] for i in rows) == 2
