"""The dataset scan DVC depends on: every file, its bytes' SHA-256, and a cache that skips unchanged files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import maskface.data.scan as scan
from maskface.data.datasets import DataConfig
from maskface.tables import read_csv


def _tree(root: Path) -> dict[bytes, bytes]:
    files = {
        b"a/1.jpg": b"one",
        b"a/caf\xe9.jpg": b"latin-1 name",
        b"b/.hidden": b"",
        b"b/sub/2.png": b"two" * 1000,
    }
    for relative, content in files.items():
        path = os.path.join(os.fsencode(root), relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(content)
    return files


def _expected(root: Path, files: dict[bytes, bytes]) -> list[tuple[bytes, int, str]]:
    # Oracle: hashlib on the bytes written, sorted by the path bytes.
    return sorted(
        (os.path.join(os.fsencode(root), rel), len(content), hashlib.sha256(content).hexdigest())
        for rel, content in files.items()
    )


def _rows(table) -> list[tuple[bytes, int, str]]:
    return [(os.fsencode(r.path), int(r.size), r.sha256) for r in table.itertuples(index=False)]


def test_scan_lists_every_file_with_its_hash(tmp_path: Path):
    root = tmp_path / "data"
    files = _tree(root)
    out = tmp_path / "scan.csv"
    table = scan.write_scan(DataConfig(source="folder", root=str(root)), out)
    assert _rows(table) == _expected(root, files)
    assert _rows(read_csv(out)) == _expected(root, files)
    assert set(table["problem"]) == {""}


def test_same_files_give_the_same_bytes_whatever_their_times(tmp_path: Path):
    root = tmp_path / "data"
    _tree(root)
    config = DataConfig(source="folder", root=str(root))
    scan.write_scan(config, tmp_path / "first.csv")
    for folder, _, names in os.walk(os.fsencode(root)):
        for name in names:
            os.utime(os.path.join(folder, name), ns=(1, 1))
    scan.write_scan(config, tmp_path / "second.csv")
    assert (tmp_path / "first.csv").read_bytes() == (tmp_path / "second.csv").read_bytes()


def test_the_cache_rereads_only_changed_files(tmp_path: Path, monkeypatch):
    root = tmp_path / "data"
    files = _tree(root)
    config = DataConfig(source="folder", root=str(root))
    cache = tmp_path / "cache.csv"
    read: list[bytes] = []
    real = scan._sha256
    monkeypatch.setattr(scan, "_sha256", lambda path: read.append(os.fsencode(path)) or real(path))

    scan.write_scan(config, tmp_path / "s.csv", cache)
    assert len(read) == len(files)
    read.clear()
    scan.write_scan(config, tmp_path / "s.csv", cache)
    assert read == []

    edited = os.path.join(os.fsencode(root), b"a/caf\xe9.jpg")
    with open(edited, "wb") as handle:
        handle.write(b"a longer, different content")
    files[b"a/caf\xe9.jpg"] = b"a longer, different content"
    table = scan.write_scan(config, tmp_path / "s.csv", cache)
    assert read == [edited]
    assert _rows(table) == _expected(root, files)


def test_a_damaged_cache_only_costs_time(tmp_path: Path):
    root = tmp_path / "data"
    files = _tree(root)
    cache = tmp_path / "cache.csv"
    cache.write_bytes(b"not,a\ncache\x00")
    table = scan.write_scan(DataConfig(source="folder", root=str(root)), tmp_path / "s.csv", cache)
    assert _rows(table) == _expected(root, files)


def test_manifest_source_lists_the_csv_and_the_files_it_names(tmp_path: Path):
    root = tmp_path / "data"
    files = _tree(root)
    listing = root / "list.csv"
    listing.write_bytes(b"path,identity,masked\na/caf\xe9.jpg,x,false\n" + os.path.join(os.fsencode(root), b"a/1.jpg") + b",y,true\n")
    table = scan.write_scan(DataConfig(source="manifest", root=str(listing)), tmp_path / "s.csv")
    paths = [os.fsencode(p) for p in table["path"]]
    assert paths == sorted(
        [os.fsencode(listing), os.path.join(os.fsencode(root), b"a/caf\xe9.jpg"), os.path.join(os.fsencode(root), b"a/1.jpg")]
    )
    assert int(table.loc[table["path"] == os.fsdecode(os.path.join(os.fsencode(root), b"a/1.jpg")), "size"].iloc[0]) == len(files[b"a/1.jpg"])


def test_synthetic_source_scans_nothing_and_an_unreadable_file_is_recorded(tmp_path: Path):
    assert scan.write_scan(DataConfig(source="synthetic", root=str(tmp_path / "absent")), tmp_path / "s.csv").empty
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    root = tmp_path / "data"
    _tree(root)
    locked = os.path.join(os.fsencode(root), b"a/1.jpg")
    os.chmod(locked, 0)
    try:
        table = scan.write_scan(DataConfig(source="folder", root=str(root)), tmp_path / "s.csv")
    finally:
        os.chmod(locked, 0o644)
    row = table[table["path"] == os.fsdecode(locked)].iloc[0]
    assert row["sha256"] == "" and row["problem"].startswith("unreadable")


@pytest.fixture
def offline_weights(tmp_path, monkeypatch):
    """No download, an empty torch cache and no weights folder: nothing but what a test publishes."""
    from maskface.models import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setattr(weights, "_download", lambda url, destination: (_ for _ in ()).throw(OSError("offline")))


@pytest.fixture
def weights_share(offline_weights, tmp_path, monkeypatch):
    """An empty MASKFACE_WEIGHTS_DIR; ``publish(spec, content)`` puts a weights file in it that
    the registry's SHA-256 accepts. Returns (folder, publish)."""
    from maskface.models import weights

    folder = tmp_path / "share"
    folder.mkdir()
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))

    def publish(spec: str, content: bytes) -> None:
        source = weights.get_source(spec)
        (folder / source.filename).write_bytes(content)
        monkeypatch.setitem(weights._registry(), spec, weights.WeightSource(**{**source.__dict__, "sha256": hashlib.sha256(content).hexdigest()}))

    return folder, publish


def test_weights_records_say_which_file_each_backbone_starts_from(tmp_path, weights_share):
    import json

    from maskface.data.scan import write_weights_records

    _, publish = weights_share
    params = {"backbones": {"mobilefacenet": {"weights": "auto"}, "alexnet": {"weights": "none"}}}
    out = tmp_path / "weights"
    records = write_weights_records(params, out)
    assert records["alexnet"]["spec"] is None and records["mobilefacenet"]["spec"] is None  # auto, nothing found
    # The file appears: the record changes, so DVC reruns that backbone's fine-tuning.
    publish("mobilefacenet:ms1m", b"w")
    before = (out / "alexnet.json").stat().st_mtime_ns
    records = write_weights_records(params, out)
    saved = json.loads((out / "mobilefacenet.json").read_text())
    assert saved == records["mobilefacenet"] and saved["sha256"] == hashlib.sha256(b"w").hexdigest()
    assert saved["spec"] == "mobilefacenet:ms1m" and saved["origin"] == "official"
    assert (out / "alexnet.json").stat().st_mtime_ns == before  # unchanged records are not rewritten


def test_an_explicit_weights_name_that_cannot_be_found_stops_the_scan(tmp_path, offline_weights):
    from maskface.models import weights
    from maskface.data.scan import write_weights_records

    with pytest.raises(weights.WeightsUnavailableError, match="edgeface_xs_q.pt"):
        write_weights_records({"backbones": {"edgeface": {"weights": "webface12m"}}}, tmp_path / "weights")


def test_a_fusions_weights_record_lists_each_member_file_and_changes_with_either(tmp_path, weights_share):
    import json

    from maskface.models import weights
    from maskface.data.scan import write_weights_records

    folder, publish = weights_share
    params = {"backbones": {"edgeface+mobilefacenet": {"weights": "auto"}}}
    out = tmp_path / "weights"
    publish("edgeface:webface12m", b"e")
    # One member's file missing: auto means from scratch for the whole fusion.
    assert write_weights_records(params, out)["edgeface+mobilefacenet"]["spec"] is None
    publish("mobilefacenet:ms1m", b"m1")
    records = write_weights_records(params, out)
    first = json.loads((out / "edgeface+mobilefacenet.json").read_text())
    assert first == records["edgeface+mobilefacenet"]
    assert first["spec"] == "edgeface+mobilefacenet:pretrained" and first["weights"] == "auto"
    assert [(m["spec"], m["file"], m["sha256"]) for m in first["members"]] == [
        ("edgeface:webface12m", "edgeface_xs_q.pt", hashlib.sha256(b"e").hexdigest()),
        ("mobilefacenet:ms1m", "mobilefacenet_ms1m.pt", hashlib.sha256(b"m1").hexdigest()),
    ]
    # The second member's file changes: so does the record DVC's finetune@ depends on.
    publish("mobilefacenet:ms1m", b"m2")
    write_weights_records(params, out)
    second = json.loads((out / "edgeface+mobilefacenet.json").read_text())
    assert second["members"][0] == first["members"][0] and second["members"][1]["sha256"] == hashlib.sha256(b"m2").hexdigest()
    # An explicit name needs every member's file.
    (folder / "edgeface_xs_q.pt").unlink()
    with pytest.raises(weights.WeightsUnavailableError, match="edgeface_xs_q.pt"):
        write_weights_records({"backbones": {"edgeface+mobilefacenet": {"weights": "pretrained"}}}, out)
