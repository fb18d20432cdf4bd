"""Compile once per cluster: what one process compiled, another process with an empty local cache (another
node) loads from the shared folder and does not compile again (labeler.models.compile_cache)."""

import json
import logging
import os
import subprocess
import sys

import torch

from labeler.models.compile_cache import CompileCache, cache_name

#: One process: a small network compiled as an actor compiles its models, its cache loaded before and saved
#: after (the actors' own wiring is in tests/test_fast_path.py).
ACTOR_PROCESS = """
import json, sys, torch
from torch._dynamo.utils import counters
from labeler.models.compile_cache import CompileCache
from labeler.models.speedups import compile_modules
torch.set_num_threads(1)
cache = CompileCache(sys.argv[1], "dinov2", {"dinov2": "a small network"}, torch.device("cpu"))
loaded = cache.load()
torch.manual_seed(0)
network = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Linear(64, 8))  # extern products: no C++ to build
compile_modules(network)
with torch.inference_mode():
    network(torch.zeros(4, 32))
print(json.dumps({"loaded": loaded, "saved": cache.save(), **counters["inductor"]}))
"""


def run_actor(folder, local_cache) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(local_cache)}
    done = subprocess.run([sys.executable, "-c", ACTOR_PROCESS, str(folder)], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_on_another_node_loads_instead_of_compiling(tmp_path):
    shared = tmp_path / "shared"
    first = run_actor(shared, tmp_path / "node-a")
    assert first["loaded"] is False and first["saved"] is True
    assert first.get("fxgraph_cache_miss", 0) >= 1 and first.get("fxgraph_cache_hit", 0) == 0
    second = run_actor(shared, tmp_path / "node-b")  # its own empty local cache: only the shared file can help
    assert second["loaded"] is True and second["saved"] is False
    assert second.get("fxgraph_cache_hit", 0) >= 1 and second.get("fxgraph_cache_miss", 0) == 0


def test_the_file_name_follows_the_stage_settings_and_device():
    cpu = torch.device("cpu")
    name = cache_name("dinov2", {"dinov2": "random:tiny", "dtype": "bf16"}, cpu)
    assert name.startswith("dinov2-") and name.endswith(".torch-compile")
    assert name == cache_name("dinov2", {"dtype": "bf16", "dinov2": "random:tiny"}, cpu)
    assert name != cache_name("dinov2", {"dinov2": "random:tiny", "dtype": "fp32"}, cpu)
    assert name != cache_name("sam2", {"dinov2": "random:tiny", "dtype": "bf16"}, cpu)


def test_a_damaged_or_missing_cache_is_never_an_error(tmp_path, caplog):
    cache = CompileCache(str(tmp_path), "sam2", {}, torch.device("cpu"))
    assert cache.load() is False  # no file yet
    (tmp_path / cache.uri.rsplit("/", 1)[1]).write_bytes(b"not a cache")
    with caplog.at_level(logging.WARNING):
        assert cache.load() is False
    assert not cache.loaded


def test_nothing_compiled_is_not_saved_and_saving_is_tried_again(tmp_path, monkeypatch):
    cache = CompileCache(str(tmp_path / "cache"), "sam2", {}, torch.device("cpu"))
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)
    assert cache.save() is False and not cache.saved
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"artifacts", None))
    assert cache.save() is True and cache.saved
    assert (tmp_path / "cache" / cache.uri.rsplit("/", 1)[1]).read_bytes() == b"artifacts"
    assert cache.save() is False  # once


def test_run_option_default_off_and_shared_folders(tmp_path):
    from labeler.outdir import layout
    from labeler.run.config import RunConfig

    out = str(tmp_path / "out")
    assert RunConfig("b", "i", out).compile_cache_folder is None  # without --compile
    assert RunConfig("b", "i", out, compile=True).compile_cache_folder == f"{out}/_state/compile-cache"
    assert RunConfig("b", "i", out, compile=True, compile_cache="off").compile_cache_folder is None
    assert RunConfig("b", "i", out, compile=True, compile_cache="s3://cache/x").compile_cache_folder == "s3://cache/x"
    # labeler's own entry of OUT: not foreign, and kept by --overwrite (it does not depend on the labels)
    cache = tmp_path / "out" / "_state" / "compile-cache"
    cache.mkdir(parents=True)
    (cache / "sam2-0.torch-compile").write_bytes(b"x")
    layout.check_not_foreign(out)
    layout.remove_own_entries(out, None)
    assert (cache / "sam2-0.torch-compile").exists()
