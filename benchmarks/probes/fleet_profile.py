"""Probe: where a Ray fleet's time goes during rounds of concurrent requests (issue 12).

    python benchmarks/probes/fleet_profile.py WORKERS N ROUNDS STEPS FRAMES MODES

MODES, comma-separated, alternate per round: ``free`` (no affinity set), ``pin`` (worker i's
threads pinned to core i, set from outside with sched_setaffinity), ``sK`` (the router
sends at most K requests at once to a worker). Per round: makespan, videos/min, each worker
process's CPU seconds and busy fraction (CPU / wall), CPU of every other process (front,
Ray daemons, anything else running), CPU seconds per video. Run under
``/work/wt/bin/cpu-exclusive`` for figures; the findings are in benchmarks/RESULTS.md.
"""

import asyncio, os, sys, time, glob, statistics
import ray
from motioncache_vllm.fleet import bench as fb
from motioncache_vllm.fleet.messages import WorkerSpec
from motioncache_vllm.fleet.server import engine_argv
from motioncache_vllm.vllm_plugin import build_model_dir, launcher
from motioncache_vllm.fleet.router import Fleet, FleetConfig

TICK = os.sysconf("SC_CLK_TCK")
WORKERS = int(sys.argv[1])
N = int(sys.argv[2])
ROUNDS = int(sys.argv[3])
STEPS = int(sys.argv[4])
FRAMES = int(sys.argv[5])
MODES = sys.argv[6].split(",")


def pstat(path):
    st = open(path).read()
    f = st.rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def cpu_all():
    out = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            out[int(d[6:])] = pstat(d + "/stat")
        except OSError:
            pass
    return out


def set_aff(pid, cores):
    for d in glob.glob(f"/proc/{pid}/task/*"):
        try:
            os.sched_setaffinity(int(d.rsplit("/", 1)[1]), cores)
        except OSError:
            pass


class S:
    pass


s = S()
s.prompts = ["a red circle moves right slowly", "a green square moves left quickly", "static scene"]
s.frames = FRAMES
s.steps = STEPS
s.seed = 0


async def main():
    model_dir = str(build_model_dir("embedded"))
    argv = launcher.serve_argv(model_dir, host="127.0.0.1", port=1, served_model_name="embedded", extra=[])
    env = {k: os.environ.get(k, v) for k, v in launcher.ENV_DEFAULTS.items()}
    spec = WorkerSpec(worker_id=0, model_dir=model_dir, engine_argv=engine_argv(argv), env=env)
    fleet = Fleet(spec, FleetConfig(workers=WORKERS, cpus_per_worker=1, max_attempts=2, session_budget_mib=0))
    await fleet.start()
    try:
        await asyncio.gather(*(fleet.generate(b) for b in fb._bodies(s, WORKERS * 2, 1000)))
        pids = [w.info.pid for w in fleet.workers]
        res = {m: [] for m in MODES}
        for r in range(ROUNDS):
            for mode in MODES:
                if mode.startswith("s"):
                    fleet.config.slots_per_worker = int(mode[1:])
                for i, p in enumerate(pids):
                    set_aff(p, {i % os.cpu_count()} if mode == "pin" else set(range(os.cpu_count())))
                c0 = cpu_all()
                t0 = time.perf_counter()
                await asyncio.gather(*(fleet.generate(b) for b in fb._bodies(s, N, 100 * r)))
                wall = time.perf_counter() - t0
                c1 = cpu_all()
                wcpu = [c1[p] - c0[p] for p in pids]
                other = sum(c1[p] - c0.get(p, 0) for p in c1 if p not in pids)
                vpm = 60 * N / wall
                res[mode].append(vpm)
                print(
                    f"round {r} {mode}: wall {wall:.2f}s vpm {vpm:.1f} worker cpu {[round(x, 2) for x in wcpu]} busy {[round(x / wall, 2) for x in wcpu]} other cpu {other:.2f}s cpu/video {sum(wcpu) / N:.3f}",
                    flush=True,
                )
        for m in MODES:
            print(f"MODE {m}: vpm median {statistics.median(res[m]):.2f} all {[round(x, 1) for x in res[m]]}")
    finally:
        await fleet.stop()


ray.init(num_cpus=WORKERS, object_store_memory=256 * 2**20, include_dashboard=False, logging_level="WARNING")
try:
    asyncio.run(main())
finally:
    ray.shutdown()
