"""Serving on Ray: a fleet of vLLM engines (one per Ray actor) behind one HTTP front.

``motioncache serve --workers N [--ray-address auto|ADDR]``. Layering: this package imports
``vllm_plugin`` and ``runtime``; nothing below imports it. vLLM's CPU platform refuses
vLLM's own Ray executor, so Ray sits above the engines: each worker actor hosts one
in-process engine (pinned torch threads on CPU, one GPU per actor where the cluster has GPUs).

- :mod:`.messages`: msgspec Structs between the front and the workers (msgpack bytes on Ray);
- :mod:`.worker`: the actor (``EngineWorker``): engine thread, per-chunk checkpoints;
- :mod:`.router`: ``Fleet``: routing, retries, resumption from checkpoints;
- :mod:`.server`: the HTTP front and ``launch_fleet``.

Only the standard library is imported here (Ray and vLLM load with the submodules).
"""
