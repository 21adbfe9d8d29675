import os
import stat

import numpy as np
import pandas as pd
import pytest

from ctrlbench import io, paramsets, shards
from ctrlbench.errors import ConfigError


def test_shard_of_is_stable_and_spread():
    # Pinned values: a change of the hash would silently move every item to another shard.
    assert [shards.shard_of(f"item{i}", 4) for i in range(8)] == [
        shards.shard_of(f"item{i}", 4) for i in range(8)]
    assert shards.shard_of("Black_Footed_Albatross_0001_796111", 7) == int.from_bytes(
        __import__("hashlib").sha1(b"Black_Footed_Albatross_0001_796111").digest()[:8], "big") % 7
    counts = np.bincount([shards.shard_of(f"img_{i:05d}", 8) for i in range(4000)], minlength=8)
    assert counts.min() > 400 and counts.max() < 600
    with pytest.raises(ValueError):
        shards.shard_of("x", 0)


def _items(ids):
    return pd.DataFrame({"item_id": ids, "image": [f"/data/{i}.jpg" for i in ids]})


def test_adding_items_rewrites_only_their_shards(tmp_path):
    ids = [f"img_{i:03d}" for i in range(40)]
    assert shards.write_shard_files(_items(ids), tmp_path, 4) == [0, 1, 2, 3]
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.csv")}
    assert shards.write_shard_files(_items(ids), tmp_path, 4) == []  # unchanged: nothing rewritten
    new_id = "img_new"
    changed = shards.write_shard_files(_items(ids + [new_id]), tmp_path, 4)
    assert changed == [shards.shard_of(new_id, 4)]
    for path in tmp_path.glob("shard-*.csv"):
        if int(path.stem.split("-")[1]) not in changed:
            assert path.stat().st_mtime_ns == mtimes[path.name]
    back = pd.concat(shards.read_shard(p) for p in sorted(tmp_path.glob("shard-*.csv")))
    assert sorted(back["item_id"]) == sorted(ids + [new_id])


def test_lowering_n_shards_removes_stale_files(tmp_path):
    shards.write_shard_files(_items(["a", "b", "c"]), tmp_path, 4)
    shards.write_shard_files(_items(["a", "b", "c"]), tmp_path, 2)
    assert sorted(p.name for p in tmp_path.glob("shard-*.csv")) == ["shard-000.csv", "shard-001.csv"]


def test_paramset_names_show_swept_values():
    sets = paramsets.expand({"steps": 20, "guidance_scale": 7.5, "seed": 0},
                            {"guidance_scale": [5.0, 7.5], "steps": [np.int64(10)]})
    assert list(sets) == ["guidance_scale=5.0__steps=10", "guidance_scale=7.5__steps=10"]
    assert sets["guidance_scale=5.0__steps=10"] == {"steps": 10, "guidance_scale": 5.0, "seed": 0}
    assert type(sets["guidance_scale=5.0__steps=10"]["steps"]) is int  # numpy scalar cast
    assert paramsets.parse_name("guidance_scale=5.0__steps=10") == {"guidance_scale": "5.0", "steps": "10"}
    assert list(paramsets.expand({"a": 1})) == ["default"]
    assert paramsets.parse_name("default") == {}


@pytest.mark.parametrize("sweep", [{"b": [1]}, {"a": []}, {"a": [1, 1]}, {"a": ["x/y"]}, {"a": [[1, 2]]}])
def test_bad_sweeps_are_rejected(sweep):
    with pytest.raises(ConfigError):
        paramsets.expand({"a": 1}, sweep)


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(target.parent.iterdir()) == []
    folder = tmp_path / "shard-000"
    with pytest.raises(RuntimeError):
        with io.atomic_dir(folder) as tmp:
            (tmp / "a.png").write_text("x")
            raise RuntimeError("killed")
    assert not folder.exists() and list(tmp_path.iterdir()) == [tmp_path / "out"]
    with io.atomic_dir(folder) as tmp:
        (tmp / "manifest.csv").write_text("item_id\n")
    assert (folder / "manifest.csv").read_text() == "item_id\n"


def test_a_killed_attempts_temporaries_are_removed_by_the_next_attempt(tmp_path):
    """SIGKILL runs no cleanup: the hidden temporaries stay until the output is written again."""
    stale_file = tmp_path / ".table.csv.ab_cd123.tmp.csv"
    stale_dir = tmp_path / ".shard-000.x1y2z3w4.tmp"
    stale_file.write_text("half")
    (stale_dir / "a.png").parent.mkdir()
    (stale_dir / "a.png").write_text("half")
    others = [tmp_path / ".table.csv.b.abcdefgh.tmp",  # a temporary of the output "table.csv.b"
              tmp_path / ".shard-0001.abcdefgh.tmp",  # of "shard-0001"
              tmp_path / ".table.csv.abc.tmp"]  # not a mkstemp name
    for other in others:
        other.write_text("keep")
    io.write_text(tmp_path / "table.csv", "a\n")
    assert not stale_file.exists() and stale_dir.exists()
    with io.atomic_dir(tmp_path / "shard-000") as tmp:
        (tmp / "manifest.csv").write_text("item_id\n")
    assert not stale_dir.exists()
    assert all(other.read_text() == "keep" for other in others)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["shard-000", "table.csv"]


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "a b", "..", "x\n"])
def test_safe_name_rejects_path_escapes(name):
    with pytest.raises(ValueError):
        io.safe_name(name)


def test_provenance_records_versions():
    record = io.provenance(seed=3)
    assert record["seed"] == 3
    assert record["packages"]["torch"].startswith("2.14.1")
    assert record["python"].count(".") == 2


def test_atomic_outputs_get_the_umask_mode_not_the_private_temp_mode(tmp_path):
    """mkstemp/mkdtemp make 0600/0700 entries; results must be readable as the umask allows."""
    old = os.umask(0o022)
    try:
        io.write_csv(tmp_path / "table.csv", pd.DataFrame({"a": [1]}))
        with io.atomic_dir(tmp_path / "shard-000") as tmp:
            (tmp / "manifest.csv").write_text("item_id\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "table.csv").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "shard-000").stat().st_mode) == 0o755
