"""Pretrained weights by name from torchvision's files: rx.create_model(name,
pretrained=...), read without torch, hash-checked and cached, against a local
server that stands in for download.pytorch.org (no network needed)."""

import hashlib
import http.server
import io
import pickle
import threading
import zipfile

import jax
import numpy as np
import pytest
from conftest import block_torch_import, randomize

import resnext_jax as rx
from resnext_jax.commands import predict as predict_command
from resnext_jax.weights import download, pretrained

# A small ResNeXt-50 (one block per stage): the file the server hands out
# has torchvision's names, at a size a test can write.
SMALL = dict(stage_sizes=(1, 1, 1, 1), cardinality=4, base_width=4)


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    requests: list = []

    def do_GET(self):  # noqa: N802 (http.server's names)
        self.requests.append(self.path)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        del args


def _torch_file(variables, model) -> bytes:
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(np.array(v)) for k, v in
             rx.to_torch_state_dict(variables, model).items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _publish(monkeypatch, server, handler, tag, data, resize=232,
             hash_of=None):
    """Serves ``data`` as resnext50_32x4d's ``tag`` under a torchvision-style
    name carrying the SHA-256 prefix of ``hash_of`` (default: ``data``)."""
    digest = hashlib.sha256(hash_of or data).hexdigest()[:8]
    filename = f"resnext50_32x4d-{digest}.pth"
    handler.files[f"/models/{filename}"] = data
    table = {**pretrained.TORCHVISION_WEIGHTS}
    table["resnext50_32x4d"] = {**table["resnext50_32x4d"],
                                tag: (filename, resize)}
    monkeypatch.setattr(pretrained, "TORCHVISION_WEIGHTS", table)
    monkeypatch.setattr(pretrained, "TORCHVISION_URL",
                        f"http://127.0.0.1:{server.server_port}/models/")
    return filename


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNEXT_JAX_HOME", str(tmp_path / "home"))
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    handler = type("Files", (_Files,), {"files": {}, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd, handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def small():
    model = rx.create_model("resnext50_32x4d", **SMALL)
    variables = randomize(jax.eval_shape(
        lambda: rx.init_variables(model, 0, 32)), seed=5)
    return model, variables


def _assert_same(a, b):
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(a)[0]:
        np.testing.assert_array_equal(leaf, flat_b[path])


def test_pretrained_true_loads_torchvisions_default_without_torch(
        server, small, monkeypatch, tmp_path):
    httpd, handler = server
    model, variables = small
    filename = _publish(monkeypatch, httpd, handler, "IMAGENET1K_V2",
                        _torch_file(variables, model))
    block_torch_import(monkeypatch)
    loaded = rx.create_model("resnext50_32x4d", pretrained=True, **SMALL)
    _assert_same(loaded.variables, variables)
    assert loaded.model == model
    assert loaded.preprocessing == rx.Preprocessing(
        resize_size=232, crop_size=224, interpolation="bilinear")
    assert len(loaded.class_names) == 1000
    cached = tmp_path / "home" / "torchvision" / filename
    assert cached.is_file() and handler.requests == [f"/models/{filename}"]
    # Offline: the server gone, the cached file loads.
    httpd.shutdown()
    again = rx.create_model("resnext50_32x4d", pretrained="IMAGENET1K_V2",
                            **SMALL)
    _assert_same(again.variables, variables)
    assert rx.load_pretrained("resnext50_32x4d.IMAGENET1K_V2",
                              **SMALL).preprocessing.resize_size == 232


def test_a_file_with_the_wrong_hash_is_refused_and_not_kept(
        server, small, monkeypatch, tmp_path):
    httpd, handler = server
    model, variables = small
    data = _torch_file(variables, model)
    _publish(monkeypatch, httpd, handler, "IMAGENET1K_V1", data,
             hash_of=b"other bytes")
    with pytest.raises(download.HashMismatchError) as error:
        rx.create_model("resnext50_32x4d", pretrained="IMAGENET1K_V1",
                        **SMALL)
    assert hashlib.sha256(b"other bytes").hexdigest()[:8] in str(error.value)
    assert hashlib.sha256(data).hexdigest() in str(error.value)
    folder = tmp_path / "home" / "torchvision"
    assert not folder.exists() or not any(folder.iterdir())


def test_a_malicious_pth_is_refused_and_runs_nothing(server, monkeypatch,
                                                     tmp_path):
    httpd, handler = server
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"fc.weight":
                                                           Payload()}))
        archive.writestr("archive/version", "3\n")
    _publish(monkeypatch, httpd, handler, "IMAGENET1K_V1", buffer.getvalue())
    with pytest.raises(ValueError, match="refusing to unpickle the global "
                       "builtins.exec"):
        rx.create_model("resnext50_32x4d", pretrained="IMAGENET1K_V1",
                        **SMALL)
    assert not marker.exists()


def test_offline_without_a_cached_file_names_the_url_and_the_path(
        server, monkeypatch, tmp_path):
    httpd, handler = server
    filename = _publish(monkeypatch, httpd, handler, "IMAGENET1K_V1", b"x")
    httpd.shutdown()
    httpd.server_close()
    with pytest.raises(download.WeightsUnavailableError) as error:
        rx.create_model("resnext50_32x4d", pretrained="IMAGENET1K_V1")
    message = str(error.value)
    assert f"/models/{filename}" in message and "\n" not in message
    assert str(tmp_path / "home" / "torchvision" / filename) in message


def test_predict_takes_a_model_and_the_pretrained_flag(
        server, small, monkeypatch, tmp_path, capsys):
    from PIL import Image
    httpd, handler = server
    model, variables = small
    _publish(monkeypatch, httpd, handler, "IMAGENET1K_V2",
             _torch_file(variables, model))
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(image)
    predict_command.main(["--model", "resnext50_32x4d", "--pretrained",
                          "--model-kwargs", '{"stage_sizes": [1, 1, 1, 1], '
                          '"cardinality": 4, "base_width": 4}',
                          "--crop-size", "32", "--top-k", "2", str(image)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image) and len(lines) == 3
    # ImageNet's class names come with torchvision's 1000 classes.
    probability, rest = lines[1].split(None, 1)
    label, index = rest.rsplit(" (", 1)
    assert label == rx.weights.bundle.imagenet_class_names()[int(
        index.rstrip(")"))] and 0 < float(probability) <= 1


def test_tags_and_names_are_checked_before_any_download():
    with pytest.raises(ValueError, match=r"'IMAGENET1K_V3' is not a tag of "
                       r"'resnext50_32x4d'; its weights are "
                       r"'IMAGENET1K_V1', 'IMAGENET1K_V2'"):
        rx.create_model("resnext50_32x4d", pretrained="IMAGENET1K_V3")
    with pytest.raises(ValueError, match="no published weights for "
                       "'resnext29_32x4d'"):
        rx.create_model("resnext29_32x4d", pretrained=True)
    with pytest.raises(ValueError, match="unknown model name"):
        rx.create_model("resnext51", pretrained=True)
    with pytest.raises(SystemExit, match="--pretrained takes --model"):
        predict_command.main(["--pretrained", "x.png"])


def test_list_pretrained_names_both_publishers():
    names = rx.list_pretrained()
    assert names == sorted(names) and len(names) == len(set(names))
    assert {"resnext50_32x4d.IMAGENET1K_V1", "resnext50_32x4d.IMAGENET1K_V2",
            "resnext50_32x4d.a1h_in1k",
            "resnext101_64x4d.IMAGENET1K_V1"} <= set(names)
    assert all(n.startswith("resnext50_32x4d.")
               for n in rx.list_pretrained("resnext50_32x4d"))
    assert rx.list_pretrained("resnext29_32x4d") == []
    assert all(n.split(".")[0] in rx.list_models() for n in names)
    assert pretrained.default_tag("resnext101_64x4d") == "IMAGENET1K_V1"
    assert pretrained.default_tag("seresnext50_32x4d") == "racm_in1k"


def test_the_table_is_torchvisions():
    models = pytest.importorskip("torchvision.models")
    enums = {"resnet50": models.ResNet50_Weights,
             "resnet101": models.ResNet101_Weights,
             "resnet152": models.ResNet152_Weights,
             "resnext50_32x4d": models.ResNeXt50_32X4D_Weights,
             "resnext101_32x8d": models.ResNeXt101_32X8D_Weights,
             "resnext101_64x4d": models.ResNeXt101_64X4D_Weights}
    assert set(enums) == set(pretrained.TORCHVISION_WEIGHTS)
    for model, enum in enums.items():
        assert {w.name for w in enum} == set(
            pretrained.TORCHVISION_WEIGHTS[model]), model
        assert pretrained.default_tag(model) == enum.DEFAULT.name
        for weights in enum:
            filename, resize = pretrained.TORCHVISION_WEIGHTS[model][
                weights.name]
            assert weights.url == pretrained.TORCHVISION_URL + filename
            keywords = weights.transforms.keywords
            assert keywords["crop_size"] == pretrained.TORCHVISION_CROP
            assert keywords.get("resize_size", 256) == resize
