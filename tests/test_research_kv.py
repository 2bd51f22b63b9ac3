"""K/V-eviction research harness: store and policy contracts, budgets, bit-identity at
100%, and the quick suites."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from motioncache_vllm.config import GenerationRequest
from motioncache_vllm.research.kv.policies import POLICIES, make_eviction_policy
from motioncache_vllm.research.kv.store import BudgetedKV
from motioncache_vllm.runtime.stream import KVGeometry
from motioncache_vllm.runtime.generate import generate_video

SCORED = [name for name in POLICIES if name != "full"]


def drive(store: BudgetedKV, chunks: int, make_kv, attend=None) -> list[dict]:
    """Feed ``chunks`` chunks through ``store`` as the runtime does; returns per-commit facts."""
    g = store.geometry
    chunk = g.tokens_per_frame * g.frames_per_chunk
    facts = []
    for c in range(chunks):
        start = store.chunk_start(c * chunk)
        for layer in range(g.layers):
            k, v = make_kv(layer, c * chunk, chunk)
            store.keys(layer)[0, start : start + chunk] = k
            store.values(layer)[0, start : start + chunk] = v
            if store.wants_attention and attend is not None:
                store.observe_attention(layer, attend(start + chunk))
        store.committed(c * chunk, chunk)
        facts.append({"start": start, "rows": store.rows, "committed": store.committed_tokens})
    return facts


@settings(max_examples=40, deadline=None)
@given(
    policy=st.sampled_from(SCORED),
    budget=st.floats(0.05, 1.0),
    tpf=st.integers(2, 6),
    fpc=st.integers(1, 3),
    chunks=st.integers(1, 6),
    seed=st.integers(0, 5),
)
def test_budget_is_never_exceeded_and_kept_rows_are_untouched(policy, budget, tpf, fpc, chunks, seed):
    g = KVGeometry(layers=2, tokens=tpf * fpc * chunks, heads=2, head_dim=4, tokens_per_frame=tpf, frames_per_chunk=fpc)
    gen = torch.Generator().manual_seed(seed)
    full_k = torch.randn(g.layers, g.tokens, g.heads, g.head_dim, generator=gen)
    full_v = torch.randn(g.layers, g.tokens, g.heads, g.head_dim, generator=gen)
    store = BudgetedKV(g, make_eviction_policy(policy), budget, seed=seed)
    chunk = tpf * fpc
    assert store.capacity <= g.tokens
    attend = lambda rows: torch.softmax(torch.randn(1, g.heads, chunk, rows, generator=gen), -1)
    facts = drive(store, chunks, lambda layer, lo, n: (full_k[layer, lo : lo + n], full_v[layer, lo : lo + n]), attend)
    for f in facts:
        assert f["start"] + chunk <= store.capacity  # the active chunk always fits
        assert f["rows"] == min(math.floor(budget * f["committed"]), f["committed"])
    for layer in range(g.layers):
        pos = store._pos[layer][: store.rows]
        assert bool((pos[1:] > pos[:-1]).all())  # distinct, in position order
        kept_k, kept_v = store.keys(layer)[0, : store.rows], store.values(layer)[0, : store.rows]
        counts = store._counts[layer][: store.rows]
        plain = counts == 1  # merge rewrites the rows it merged into; every other row is as written
        assert torch.equal(kept_k[plain], full_k[layer, pos][plain])
        assert torch.equal(kept_v[plain], full_v[layer, pos][plain])
        assert float(counts.sum()) <= store.committed_tokens


def static_and_moving(tpf=4, fpc=2, chunks=3, heads=2, dim=4):
    """K/V where spatial positions 0, 1 never change and 2, 3 change every frame."""
    g = KVGeometry(1, tpf * fpc * chunks, heads, dim, tpf, fpc)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(tpf, heads, dim, generator=gen)
    frames = []
    for _ in range(g.tokens // tpf):
        f = base.clone()
        f[2:] = torch.randn(tpf - 2, heads, dim, generator=gen) * 3
        frames.append(f)
    kv = torch.cat(frames)
    return g, lambda layer, lo, n: (kv[lo : lo + n], kv[lo : lo + n] * 0.5)


def test_motion_evicts_static_positions_and_keeps_the_first_frame():
    g, make = static_and_moving()
    store = BudgetedKV(g, make_eviction_policy("motion"), 0.5)
    drive(store, 3, make)
    pos = store._pos[0][: store.rows]
    frames, spatial = pos // g.tokens_per_frame, pos % g.tokens_per_frame
    assert store.rows == g.tokens // 2
    assert set(pos[frames == 0].tolist()) == set(range(g.tokens_per_frame))  # the first frame stays whole
    later = spatial[frames > 0]
    assert bool((later >= 2).all())  # after it, only the moving positions


def test_merge_folds_static_positions_into_their_survivor():
    g, make = static_and_moving()
    store = BudgetedKV(g, make_eviction_policy("merge"), 0.5)
    assert store.attention_bias(0) is None
    drive(store, 3, make)
    pos = store._pos[0][: store.rows]
    counts = store._counts[0][: store.rows]
    frames = g.tokens // g.tokens_per_frame
    # the static positions of frame 0 absorbed every later copy of themselves
    assert counts[pos == 0].item() == frames and counts[pos == 1].item() == frames
    bias = store.attention_bias(0)
    assert bias.shape == (1, 1, 1, store.capacity)
    assert torch.allclose(bias[0, 0, 0, : store.rows], counts.log())
    # identical rows merged into an identical survivor: the survivor is unchanged
    assert torch.allclose(store.keys(0)[0, 0], make(0, 0, 1)[0][0], atol=1e-6)


def test_window_keeps_sinks_and_the_most_recent_rows():
    g = KVGeometry(1, 4 * 2 * 5, 1, 4, 4, 2)
    store = BudgetedKV(g, make_eviction_policy("window"), 0.5)
    drive(store, 5, lambda layer, lo, n: (torch.randn(n, 1, 4), torch.randn(n, 1, 4)))
    pos = store._pos[0][: store.rows].tolist()
    sinks = [p for p in pos if p < g.tokens_per_frame]  # what is left of the first frame (evicted rows never return)
    assert 1 <= len(sinks) <= store.rows // 4 and pos[: len(sinks)] == sinks
    assert pos[len(sinks) :] == list(range(g.tokens - (store.rows - len(sinks)), g.tokens))


@pytest.mark.parametrize("policy", ["attention", "lru"])
def test_attention_policies_keep_what_is_attended(policy):
    g = KVGeometry(1, 4 * 6, 1, 4, 4, 1)
    store = BudgetedKV(g, make_eviction_policy(policy), 0.5)
    favourite = 1  # position 1 gets all the attention, always

    def attend(rows):  # attention is over rows: find the row that holds the favourite position now
        w = torch.zeros(1, 1, 4, rows)
        w[..., int(torch.nonzero(store._pos[0][:rows] == favourite)[0, 0])] = 1.0
        return w

    drive(store, 6, lambda layer, lo, n: (torch.randn(n, 1, 4), torch.randn(n, 1, 4)), attend)
    assert favourite in store._pos[0][: store.rows].tolist()
    assert store.wants_attention


def test_random_is_seeded_and_full_refuses_a_budget():
    g = KVGeometry(1, 4 * 6, 1, 4, 4, 1)
    make = lambda layer, lo, n: (torch.ones(n, 1, 4), torch.ones(n, 1, 4))
    picks = []
    for _ in range(2):
        store = BudgetedKV(g, make_eviction_policy("random"), 0.3, seed=7)
        drive(store, 6, make)
        picks.append(store._pos[0][: store.rows].tolist())
    assert picks[0] == picks[1]
    with pytest.raises(ValueError, match="keeps every row"):
        drive(BudgetedKV(g, make_eviction_policy("full"), 0.5), 6, make)
    with pytest.raises(ValueError, match="unknown K/V eviction policy"):
        make_eviction_policy("nope")
    with pytest.raises(ValueError, match="share of the full context"):
        BudgetedKV(g, make_eviction_policy("window"), 0.0)


REQ = {"prompt": "a red circle moves right", "num_frames": 17, "num_inference_steps": 3, "seed": 1}


def test_full_budget_is_bit_identical_for_every_policy_and_a_budget_holds(tiny_pipe):
    from motioncache_vllm.research.kv.video import generate_budgeted

    req = GenerationRequest(**REQ)
    plain = generate_video(tiny_pipe, req)
    for policy in POLICIES:
        run = generate_budgeted(tiny_pipe, req, policy, 1.0)
        assert set(run.stores) == {"cond", "uncond"}  # CFG: one store per branch
        assert np.array_equal(run.result.frames, plain.frames), policy
        assert run.kv_bytes == plain.stats["kv_cache_bytes"]
    for policy in SCORED:
        run = generate_budgeted(tiny_pipe, req, policy, 0.25)
        for store in run.stores.values():
            assert store.peak_rows <= math.floor(0.25 * store.committed_tokens) or store.peak_rows == 0
            assert store.evicted > 0
        assert run.kv_bytes < plain.stats["kv_cache_bytes"]
        assert not np.array_equal(run.result.frames, plain.frames), policy


@pytest.mark.parametrize(
    "suite, budgets",
    [("video", (0.75, 0.5, 0.25, 0.1)), ("scenes", (0.5, 0.1))],  # video: every budget of the issue
)
def test_quick_video_suites_run_every_policy_at_every_budget_on_the_embedded_model(tmp_path, suite, budgets):
    from typer.testing import CliRunner

    from motioncache_vllm.cli import app

    args = ["research", "kv", suite, "--quick", "--chunks", "2", "--steps", "1", "--out", str(tmp_path)]
    out = CliRunner().invoke(app, [*args, "--budgets", ",".join(map(str, budgets))])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / f"kv_{suite}.json").read_text())
    points = result["points"]
    assert result["settings"]["model"] == "embedded"
    got = {(p["policy"], p["budget"]) for p in points}
    assert got == {("full", 1.0)} | {(n, b) for n in SCORED for b in budgets}
    for p in points:
        assert {"policy", "budget", "psnr_db", "ssim", "kv_bytes"} <= set(p)
        assert p["kv_bytes"] <= p["kv_bytes_full"]
    kv = [{p["kv_bytes"] for p in points if p["budget"] == b} for b in budgets]
    assert all(len(v) == 1 for v in kv)  # equal memory for every policy at a budget
    assert all(max(a) > max(b) for a, b in zip(kv, kv[1:]))
    assert (tmp_path / f"kv_{suite}.png").stat().st_size > 0


def test_recall_presses_keep_sorted_rows_per_head_and_full_is_unpruned():
    from motioncache_vllm.research.kv import recall

    model = recall.build_model(0).eval()
    b = recall.make_batch("runs", 3, 2, torch.Generator().manual_seed(0))
    n = b.context.shape[1]
    assert n == 1 + 2 * 8 + 48 and bool((b.answers >= recall.VALUE0).all())
    with torch.no_grad():
        out = model(input_ids=b.context, use_cache=True, output_attentions=True)
        k, v = out.past_key_values.layers[0].keys, out.past_key_values.layers[0].values
        for press in recall.OWN_PRESSES:
            idx = recall.keep_indices(press, k, v, out.attentions[0], 10, model, torch.Generator().manual_seed(0))
            assert idx.shape == (3, model.config.num_key_value_heads, 10)
            assert bool((idx[..., 1:] > idx[..., :-1]).all()) and int(idx.max()) < n
        # the temporal score keeps the first token of each filler run, never a repeat before it
        free = recall.rope_free_keys(k, model)
        score = recall.temporal_scores(k, v, free)
        assert torch.isinf(score[..., 0]).all()
        gen = torch.Generator().manual_seed(0)
        full = recall.answer_with_press(model, b.context, b.queries, "window", 1.0, gen)
        ids = torch.cat([b.context, b.queries[:, 0]], 1)
        direct = model(input_ids=ids).logits[:, -1, recall.VALUE0 : recall.VALUE0 + recall.N_VALUES].argmax(-1)
        assert torch.equal(full[:, 0], direct + recall.VALUE0)


def test_quick_text_suite_runs_our_presses(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from motioncache_vllm.cli import app
    from motioncache_vllm.research.kv import text

    monkeypatch.setattr(text, "kvpress_python", lambda: None)  # kvpress has its own test below
    out = CliRunner().invoke(app, ["research", "kv", "text", "--quick", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "kv_text.json").read_text())
    assert "no kvpress environment" in result["kvpress"]
    presses = {p["policy"] for p in result["points"]}
    assert presses == {"full", "window", "h2o", "lru", "random", "temporal"}
    full = [p["accuracy"] for p in result["points"] if p["policy"] == "full"]
    assert len(full) == 2 and all(a > 1 / 16 for a in full)  # better than chance: the shipped model learned


@pytest.mark.skipif(
    __import__("motioncache_vllm.research.kv.text", fromlist=["x"]).kvpress_python() is None,
    reason="no kvpress environment (.venv-kvpress, see benchmarks/KV_EVICTION.md)",
)
def test_kvpress_presses_run_on_the_same_model_and_agree_with_ours():
    from motioncache_vllm.research.kv import recall, text

    model = text.load_model()
    data = {"runs": text.eval_set("runs", 8)}
    with torch.inference_mode():
        ours = text.run_own_presses(model, data, (0.5,), presses=("window", "temporal"), log=lambda _: None)
    theirs, why = text.run_kvpress(data, (0.5,), log=lambda _: None)
    assert why is None, why
    acc = {p["policy"]: p.get("accuracy") for p in ours + theirs}
    assert not [p for p in theirs if "error" in p]
    assert acc["kvpress:streaming_llm"] == acc["window"] and acc["kvpress:temporal"] == acc["temporal"]
    assert {"kvpress:snapkv", "kvpress:tova", "kvpress:expected_attention", "kvpress:keydiff"} <= set(acc)
    assert recall.VOCAB == model.config.vocab_size


def test_video_suite_resumes_and_reuses_its_reference(tmp_path):
    from typer.testing import CliRunner

    from motioncache_vllm.cli import app

    args = ["research", "kv", "video", "--quick", "--chunks", "2", "--steps", "1", "--out", str(tmp_path), "--resume"]
    first = CliRunner().invoke(app, [*args, "--budgets", "0.5", "--policies", "window"])
    assert first.exit_code == 0, first.output
    refs = list((tmp_path / "kv_ref").glob("*.npz"))
    assert len(refs) == 1
    stamp = refs[0].stat().st_mtime_ns
    second = CliRunner().invoke(app, [*args, "--budgets", "0.5,0.25", "--policies", "window,random"])
    assert second.exit_code == 0, second.output
    points = json.loads((tmp_path / "kv_video.json").read_text())["points"]
    got = sorted((p["policy"], p["budget"]) for p in points)
    assert got == [("full", 1.0), ("random", 0.25), ("random", 0.5), ("window", 0.25), ("window", 0.5)]
    assert refs[0].stat().st_mtime_ns == stamp  # the reference video came from the cache
    ref = np.load(refs[0])["frames"]
    assert {p["ref_sha256"] for p in points} == {hashlib.sha256(ref.tobytes()).hexdigest()[:16]}
    other = CliRunner().invoke(app, [*args, "--chunks", "3", "--policies", "window"])
    assert other.exit_code == 2 and "was run with chunks=2" in other.output
    bad = CliRunner().invoke(app, [*args, "--policies", "impact"])
    assert bad.exit_code == 2 and "valid: window" in bad.output
    bad = CliRunner().invoke(app, ["research", "kv", "nope"])
    assert bad.exit_code == 2 and "unknown suite" in bad.output


def test_row_scores_are_the_exact_output_change_of_removing_one_row():
    from motioncache_vllm.research.kv.crossmodal import _row_scores

    gen = torch.Generator().manual_seed(0)
    w = torch.softmax(torch.randn(1, 1, 5, generator=gen, dtype=torch.float64) * 2, -1)  # 1 head, 1 query, 5 rows
    v = torch.randn(5, 1, 3, generator=gen, dtype=torch.float64)
    impact, mass = _row_scores(w, v)
    o = w[0, 0] @ v[:, 0]
    for i in range(5):
        rest = [j for j in range(5) if j != i]
        o_without = (w[0, 0, rest] / w[0, 0, rest].sum()) @ v[rest, 0]
        assert float(impact[i]) == pytest.approx(float((o_without - o).norm()), rel=1e-5)
    assert torch.allclose(mass, w[0, 0].double())


@pytest.mark.parametrize("mode", ["impact", "mass", "proportional", "text-full", "video-first", "sets"])
def test_crossmodal_store_holds_one_budget_over_both_modalities(mode):
    from motioncache_vllm.research.kv.crossmodal import CrossModalKV

    g = KVGeometry(layers=2, tokens=4 * 2 * 5, heads=2, head_dim=4, tokens_per_frame=4, frames_per_chunk=2)
    gen = torch.Generator().manual_seed(1)
    text_rows, budget = 6, 0.5  # the text fits the budget at the first commit
    store = CrossModalKV(g, mode, budget, text_rows)
    chunk = 8

    def attend(rows):
        return torch.softmax(torch.randn(1, g.heads, chunk, rows, generator=gen), -1)

    def make_kv(layer, lo, n):
        return torch.randn(n, g.heads, g.head_dim, generator=gen), torch.randn(n, g.heads, g.head_dim, generator=gen)

    for c in range(5):
        start = store.chunk_start(c * chunk)
        for layer in range(g.layers):
            k, v = make_kv(layer, c * chunk, chunk)
            store.keys(layer)[0, start : start + chunk] = k
            store.values(layer)[0, start : start + chunk] = v
            store.observe_attention(layer, attend(start + chunk))
            n = store.text_kept.numel()
            q = torch.randn(chunk, g.heads, g.head_dim, generator=gen)
            # text row 0 carries the information: its key matches every query, its value is far off
            tk = torch.randn(n, g.heads, g.head_dim, generator=gen) * 0.1
            tv = torch.randn(n, g.heads, g.head_dim, generator=gen) * 0.1
            if 0 in store.text_kept.tolist():
                at = store.text_kept.tolist().index(0)
                tk[at], tv[at] = q.mean(0) * 20, 5.0
            store.observe_text(layer, q, tk, tv)
        store.committed(c * chunk, chunk)
        h = store.history[-1]
        assert h["video"] + h["text"] <= h["budget_rows"] == math.floor(budget * (store.committed_tokens + text_rows))
        assert h["text"] == store.text_kept.numel() >= 1 and h["video"] == store.rows
        assert bool((store.text_kept[1:] > store.text_kept[:-1]).all())
        assert c == 4 or store.rows + chunk <= store.capacity  # the next chunk fits
    kept = store.text_kept.tolist()
    if mode == "text-full":
        assert kept == list(range(text_rows))
    elif mode == "video-first":
        assert len(kept) == 1
    elif mode == "proportional":
        assert len(kept) == math.floor(budget * text_rows)
    else:  # the shared currencies keep the informative text row over video rows
        assert 0 in kept
    with pytest.raises(ValueError, match="unknown cross-modal mode"):
        CrossModalKV(g, "nope", 0.5, text_rows)


def test_sets_scores_identical_text_rows_as_one_and_merges_them_losslessly():
    from motioncache_vllm.research.kv.crossmodal import CrossModalKV

    g = KVGeometry(layers=1, tokens=4 * 2 * 3, heads=2, head_dim=4, tokens_per_frame=4, frames_per_chunk=2)
    gen = torch.Generator().manual_seed(3)
    text_rows, chunk = 6, 8
    embeds = torch.randn(text_rows, 5, generator=gen)
    embeds[2:] = 0.0  # rows 2..5: identical (padding)
    store = CrossModalKV(g, "sets", 0.8, text_rows)
    store.set_text_rows(embeds)
    q = torch.randn(chunk, g.heads, g.head_dim, generator=gen, dtype=torch.float64)
    tk = torch.randn(text_rows, g.heads, g.head_dim, generator=gen, dtype=torch.float64)
    tv = torch.randn(text_rows, g.heads, g.head_dim, generator=gen, dtype=torch.float64)
    tk[2:], tv[2:] = tk[2], tv[2]
    start = store.chunk_start(0)
    store.keys(0)[0, start : start + chunk] = torch.randn(chunk, g.heads, g.head_dim, generator=gen)
    store.observe_attention(0, torch.softmax(torch.randn(1, g.heads, chunk, chunk, generator=gen), -1))
    store.observe_text(0, q, tk, tv)

    def attend(keys, values, bias=None):  # (heads, queries, d)
        logits = q.transpose(0, 1) @ keys.transpose(0, 1).transpose(-1, -2) * g.head_dim**-0.5
        return torch.softmax(logits if bias is None else logits + bias, -1) @ values.transpose(0, 1)

    o = attend(tk, tv)
    for removed in ([0], [1], [2, 3, 4, 5]):  # a padding row is scored as the whole group
        rest = [j for j in range(text_rows) if j not in removed]
        change = float((attend(tk[rest], tv[rest]) - o).norm(dim=-1).mean())
        for j in removed:
            assert float(store._t_impact[0, j]) == pytest.approx(change, rel=1e-4)
    store.committed(0, chunk)  # budget floor(0.8 x 14) = 11 < 8 + 6 rows: merging the copies is enough
    assert store.text_kept.tolist() == [0, 1, 2] and store.text_counts.tolist() == [1.0, 1.0, 4.0]
    assert store.evicted == 0 and store.history[-1] == {"committed": 8, "budget_rows": 11, "video": 8, "text": 3}
    # one row with a +log 4 logit bias attends exactly as the four copies did
    assert torch.allclose(attend(tk[:3], tv[:3], store.text_bias[0].double()), o, atol=1e-12)
    assert not torch.allclose(attend(tk[:3], tv[:3]), o, atol=1e-3)


def test_crossmodal_full_budget_is_bit_identical_and_the_words_steer_the_video(tiny_pipe):
    from motioncache_vllm.research.kv.crossmodal import MODES, generate_crossmodal

    req = GenerationRequest(**{**REQ, "num_inference_steps": 2})
    plain = generate_video(tiny_pipe, req)
    for mode in MODES:
        run = generate_crossmodal(tiny_pipe, req, mode, 1.0)
        assert np.array_equal(run.result.frames, plain.frames), mode
        assert run.text_kept["cond"] == list(range(run.text_rows))
    dropped = generate_crossmodal(tiny_pipe, req, None, drop_words=True)
    assert dropped.text_kept["cond"] == list(range(dropped.words, dropped.text_rows))
    assert not np.array_equal(dropped.result.frames, plain.frames)  # later chunks read the words
    # 99%: merging the identical padding rows (+log count) makes room without evicting anything
    run = generate_crossmodal(tiny_pipe, req, "sets", 0.99)
    assert run.text_kept["cond"] == list(range(run.words + 1)) and run.text_kept["uncond"] == [0, 1]
    assert run.stores["cond"].text_counts.tolist() == [1.0] * run.words + [run.text_rows - run.words]
    assert all(s.evicted == 0 for s in run.stores.values())
    diff = np.abs(run.result.frames.astype(int) - plain.frames.astype(int))
    assert diff.max() <= 1 and diff.mean() < 1e-3  # lossless up to float rounding
    run = generate_crossmodal(tiny_pipe, req, "impact", 0.25)
    for b, store in run.stores.items():
        assert store.history and all(h["video"] + h["text"] <= h["budget_rows"] for h in store.history)
        assert run.text_kept[b] == store.text_kept.tolist()
    assert not np.array_equal(run.result.frames, plain.frames)


def test_quick_crossmodal_suite_writes_points(tmp_path):
    from typer.testing import CliRunner

    from motioncache_vllm.cli import app
    from motioncache_vllm.research.kv.crossmodal import MODES

    out = CliRunner().invoke(app, ["research", "kv", "crossmodal", "--quick", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "kv_crossmodal.json").read_text())
    points = result["points"]
    assert {p["policy"] for p in points} == {"full", "words-dropped", *MODES}
    for p in points:
        assert p["kv_bytes"] <= p["kv_bytes_full"] and 1 <= p["text_rows_kept"] <= p["text_rows"]
        assert p["colour_ok"] in (True, False) and p["ref_colour_ok"] in (True, False)
    assert "text rows kept" in out.output and (tmp_path / "kv_crossmodal.png").stat().st_size > 0
    assert len({p["ref_sha256"] for p in points}) == 1
    # --resume runs only what is missing (here: the sets point) and keeps the others as they were
    kept = [p for p in points if p["policy"] != "sets"]
    (tmp_path / "kv_crossmodal.json").write_text(json.dumps({**result, "points": kept}))
    args = ["research", "kv", "crossmodal", "--quick", "--out", str(tmp_path), "--resume", "--policies", "sets"]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    resumed = json.loads((tmp_path / "kv_crossmodal.json").read_text())["points"]
    assert resumed[: len(kept)] == kept and [p["policy"] for p in resumed[len(kept) :]] == ["sets"]
    assert resumed[-1]["psnr_db"] == next(p for p in points if p["policy"] == "sets")["psnr_db"]


def test_a_snapshot_of_a_budgeted_generation_is_refused_clearly(tiny_pipe):
    from motioncache_vllm.research.kv.policies import make_eviction_policy
    from motioncache_vllm.runtime.stepwise import StepwiseGeneration

    req = GenerationRequest(**{**REQ, "num_inference_steps": 1, "guidance_scale": 1.0})
    gen = StepwiseGeneration(tiny_pipe, req, kv_factory=lambda b, g: BudgetedKV(g, make_eviction_policy("window"), 0.5))
    try:
        while gen.step() != "commit":
            pass
        for include_kv in (True, False):
            with pytest.raises(RuntimeError, match="store evicts rows .*BudgetedKV.* not supported"):
                gen.snapshot(include_kv)
    finally:
        gen.close()
    plain = StepwiseGeneration(tiny_pipe, req)
    try:
        while plain.step() != "commit":
            pass
        assert plain.snapshot().chunks_done == 1  # the default store still snapshots
    finally:
        plain.close()
