"""What a perfect scene-cut guard could give: ``cut_guard.py`` with MagCache, except that the
first chunk of every scene (the chunk after each cut) is computed in full, both CFG branches.

    python benchmarks/probes/cut_full_chunk.py OUT.json 'JSON' "PROMPT|PROMPT|..." CHUNKS_PER_SCENE

(the arguments of cut_guard.py; JSON must name magcache). How the first chunk is found:
each scene of a ``VideoPlan`` runs on its own runner with its own policy object, which makes
one state per (chunk, CFG branch) in chunk order, so a policy object's first two states are
its scene's first chunk. A probe-only patch of MagCachePolicy, not a runtime feature.
"""

import runpy
import sys
from pathlib import Path

from motioncache_vllm.policies.base import Decision
from motioncache_vllm.policies.magcache import MagCachePolicy

_new_state, _decide = MagCachePolicy.new_state, MagCachePolicy.decide


def new_state(self, layout):
    state = _new_state(self, layout)
    made = getattr(self, "_states_made", 0)
    self._states_made = made + 1
    state.first_chunk_of_scene = made < 2
    return state


def decide(self, state, obs):
    return Decision.full() if state.first_chunk_of_scene else _decide(self, state, obs)


MagCachePolicy.new_state, MagCachePolicy.decide = new_state, decide
sys.argv = ["cut_guard.py", *sys.argv[1:]]
runpy.run_path(str(Path(__file__).with_name("cut_guard.py")), run_name="__main__")
