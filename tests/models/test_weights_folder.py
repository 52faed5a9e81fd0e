"""Weight files from a folder ($MASKFACE_WEIGHTS_DIR, `maskface weights get --from`), verified."""

import hashlib
from pathlib import Path

import pytest

from maskface.models import weights
from maskface.models.weights import (
    ChecksumMismatchError,
    WeightSource,
    WeightsUnavailableError,
    import_weights,
    provenance,
    resolve_source,
)


def _source(tmp_path: Path, content: bytes, **extra) -> WeightSource:
    return WeightSource(
        backbone="toy",
        name="w",
        filename="toy.pt",
        url="http://127.0.0.1:9/toy.pt",
        sha256=hashlib.sha256(content).hexdigest(),
        cache_subdir="checkpoints",
        note="a test file",
        **extra,
    )


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)

    def refuse(url, destination):
        raise OSError("offline")

    monkeypatch.setattr(weights, "_download", refuse)


def test_a_file_in_the_weights_folder_is_verified_and_used_in_place(tmp_path, monkeypatch):
    folder = tmp_path / "share"
    folder.mkdir()
    (folder / "toy.pt").write_bytes(b"weights")
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    source = _source(tmp_path, b"weights")
    assert resolve_source(source) == folder / "toy.pt"
    assert not source.cache_path().exists()  # nothing copied behind the user's back


def test_the_upstream_file_name_is_found_too(tmp_path):
    folder = tmp_path / "share"
    folder.mkdir()
    (folder / "upstream.pt").write_bytes(b"weights")
    source = _source(tmp_path, b"weights", other_names=("upstream.pt",))
    assert resolve_source(source, weights_dir=folder) == folder / "upstream.pt"


def test_a_wrong_file_under_the_right_name_is_refused_not_skipped(tmp_path, monkeypatch):
    folder = tmp_path / "share"
    folder.mkdir()
    (folder / "toy.pt").write_bytes(b"tampered")
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    with pytest.raises(ChecksumMismatchError, match="toy.pt"):
        resolve_source(_source(tmp_path, b"weights"))
    assert (folder / "toy.pt").read_bytes() == b"tampered"  # left in place


def test_nothing_anywhere_names_the_file_the_folder_variable_and_the_url(tmp_path):
    with pytest.raises(WeightsUnavailableError) as error:
        resolve_source(_source(tmp_path, b"weights"))
    message = str(error.value)
    assert "toy.pt" in message and weights.WEIGHTS_DIR_ENV in message and "http://127.0.0.1:9/toy.pt" in message
    assert "\n" not in message


def test_get_from_copies_into_the_cache_after_checking(tmp_path, monkeypatch):
    folder = tmp_path / "usb"
    folder.mkdir()
    (folder / "mobilefacenet.pt").write_bytes(b"weights")
    real = weights.get_source("mobilefacenet:ms1m")
    fake = WeightSource(**{**real.__dict__, "sha256": hashlib.sha256(b"weights").hexdigest()})
    monkeypatch.setitem(weights._registry(), "mobilefacenet:ms1m", fake)
    cached = import_weights("mobilefacenet:ms1m", folder)
    assert cached == fake.cache_path() and cached.read_bytes() == b"weights"
    assert provenance("mobilefacenet:ms1m", cached) == {
        "spec": "mobilefacenet:ms1m",
        "file": "mobilefacenet_ms1m.pt",
        "sha256": hashlib.sha256(b"weights").hexdigest(),
        "origin": "official",
    }
    # A second file is never copied over a verified cached one.
    (folder / "mobilefacenet.pt").write_bytes(b"other")
    assert import_weights("mobilefacenet:ms1m", folder).read_bytes() == b"weights"


def test_get_from_a_folder_without_the_file_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = weights.main(["get", "edgeface:webface12m", "--from", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "edgeface_xs_q.pt" in err


def test_every_modern_network_has_an_official_url_and_full_sha256():
    for spec in ("edgeface:webface12m", "edgeface_xxs:webface12m", "mobilefacenet:ms1m"):
        source = weights.get_source(spec)
        assert source.url.startswith("https://") and len(source.sha256) == 64


def test_converted_weights_are_recorded_as_such(tmp_path):
    source = weights.get_source("facenet:casia-webface")
    built = tmp_path / source.built_filename
    built.write_bytes(b"x")
    assert weights.weights_origin(source, built) == "converted"
    official = tmp_path / source.filename
    official.write_bytes(b"x")
    assert weights.weights_origin(source, official) == "official"


def test_without_a_published_hash_the_first_file_is_recorded_and_a_different_one_refused(tmp_path):
    source = WeightSource(
        backbone="toy", name="w", filename="toy.pt", url="http://127.0.0.1:9/toy.pt", sha256=None,
        cache_subdir="checkpoints", note="no published hash",
    )
    cached = source.cache_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"first")
    assert resolve_source(source) == cached
    ledger = weights.ledger_path(source.cache_folder())
    import json

    assert json.loads(ledger.read_text()) == {"toy:w:toy.pt": hashlib.sha256(b"first").hexdigest()}
    cached.write_bytes(b"swapped")
    with pytest.raises(ChecksumMismatchError, match="recorded on first use"):
        resolve_source(source)
