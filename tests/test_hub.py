"""Pretrained weights by name, downloaded with huggingface_hub from a local
server that answers as the Hub does (no network needed)."""

import hashlib
import http.server
import threading

import jax
import numpy as np
import pytest
from conftest import randomize

import resnext_jax as rx
from resnext_jax.weights import pretrained as hub
from resnext_jax.commands import predict as predict_command

NAME = "resnext50_32x4d.tv_in1k"
# A small ResNeXt-50 (one block per stage): the file the server hands out
# has the real names, at a size a test can write.
SMALL = dict(stage_sizes=(1, 1, 1, 1), cardinality=4, base_width=4)


class _Hub(http.server.BaseHTTPRequestHandler):
    """``/<repo>/resolve/<revision>/<file>`` with the headers
    huggingface_hub reads (commit, ETag, size)."""
    files: dict = {}
    requests: list = []

    def _headers(self):
        data = self.files.get(self.path)
        if data is None:  # As the Hub answers a repository it lacks.
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("X-Repo-Commit", "a" * 40)
        etag = getattr(self, "etag_of", {}).get(
            self.path, hashlib.sha256(data).hexdigest())
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return data

    def do_HEAD(self):  # noqa: N802 (http.server's names)
        self.requests.append(("HEAD", self.path))
        self._headers()

    def do_GET(self):  # noqa: N802
        self.requests.append(("GET", self.path))
        data = self._headers()
        if data is not None:
            self.wfile.write(data)

    def log_message(self, *args):
        del args


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A running local Hub serving NAME's weights; yields (variables,
    handler class, server)."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants  # pylint: disable=import-outside-toplevel
    model = rx.create_model("resnext50_32x4d", **SMALL)
    variables = randomize(jax.eval_shape(
        lambda: rx.init_variables(model, 0, 32)), seed=3)
    rx.weights.save_safetensors(variables, model, tmp_path / "w.safetensors")
    handler = type("Hub", (_Hub,), {
        "files": {f"/timm/{NAME}/resolve/main/model.safetensors":
                  (tmp_path / "w.safetensors").read_bytes()},
        "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE",
                        str(tmp_path / "cache"))
    yield variables, handler, server
    server.shutdown()
    server.server_close()


def _assert_same(a, b):
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    for path, leaf in flat_a:
        np.testing.assert_array_equal(leaf, flat_b[path])


def test_weights_by_name_download_once_then_load_from_the_cache(local_hub):
    variables, handler, server = local_hub
    loaded = rx.load_pretrained(NAME, **SMALL)
    _assert_same(loaded.variables, variables)
    assert loaded.preprocessing == rx.Preprocessing(
        resize_size=256, crop_size=224, interpolation="bilinear")
    assert len(loaded.class_names) == 1000 and loaded.class_names[0] == (
        "tench")
    assert [r for r in handler.requests if r[0] == "GET"] == [
        ("GET", f"/timm/{NAME}/resolve/main/model.safetensors")]
    # The server gone: the cached file loads.
    server.shutdown()
    server.server_close()
    again = rx.load_pretrained(NAME, **SMALL)
    _assert_same(again.variables, variables)


def test_a_model_alone_takes_timms_default_tag():
    assert hub.resolve_name("seresnext50_32x4d") == (
        "seresnext50_32x4d", "racm_in1k")
    spec = hub.preprocessing_of("resnext50_32x4d", "a1h_in1k")
    assert (spec.resize_size, spec.crop_size, spec.interpolation) == (
        235, 224, "bicubic")
    assert hub.resolve_name("resnext29_32x4d") is None  # Nothing published.


def test_unknown_names_and_missing_files_are_one_clear_error(local_hub,
                                                             tmp_path):
    with pytest.raises(FileNotFoundError, match="is not the name of "
                       "published weights"):
        rx.load_pretrained("resnext50_32x4d.nonexistent_tag")
    _, handler, _ = local_hub
    handler.files.clear()  # The Hub answers 404.
    with pytest.raises(OSError, match=r"downloading http://.*/timm/"
                       r"resnext50_32x4d.tv_in1k/resolve/main/"
                       r"model.safetensors failed"):
        rx.load_pretrained(NAME, **SMALL)


def test_no_network_and_no_cache_says_what_to_do(local_hub, monkeypatch):
    _, _, server = local_hub
    server.shutdown()
    server.server_close()
    with pytest.raises(OSError, match=r"cannot download http://.*/timm/"
                       r"resnext50_32x4d.tv_in1k/resolve/main/"
                       r"model.safetensors .* not in the cache"):
        rx.load_pretrained(NAME, **SMALL)


def test_predict_takes_published_weights_by_name(local_hub, tmp_path,
                                                 capsys):
    from PIL import Image
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(image)
    predict_command.main(["--model", NAME, "--pretrained", "--model-kwargs",
                  '{"stage_sizes": [1, 1, 1, 1], "cardinality": 4, '
                  '"base_width": 4}', "--crop-size", "32", "--top-k", "2",
                  str(image)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image) and len(lines) == 3


def test_the_table_is_timms_pretrained_cfg():
    timm = pytest.importorskip("timm")
    for name, (interpolation, crop_pct, size) in hub.TIMM_WEIGHTS.items():
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.hf_hub_id == f"timm/{name}", name
        assert (cfg.interpolation, cfg.crop_pct, cfg.input_size[1]) == (
            interpolation, crop_pct, size), name
        assert tuple(cfg.mean) == rx.Preprocessing().mean
    for model, tag in hub.TIMM_DEFAULT_TAGS.items():
        assert timm.models.get_pretrained_cfg(model).hf_hub_id == (
            f"timm/{model}.{tag}")


def test_fine_tuning_starts_from_published_weights_by_name(local_hub):
    from train import init_from
    from train.model_factory import build_model
    from train_helpers import tiny_config

    variables, _, _ = local_hub
    config = tiny_config(model="resnext50_32x4d", init_from=NAME)
    config.model_kwargs.stem = None  # The registry model's (ImageNet).
    for key, value in SMALL.items():
        config.model_kwargs[key] = value
    source = init_from.find_source(config)
    assert source.kind == "published" and source.preprocessing.interpolation == (
        "bilinear")
    model = build_model(config, 10, axis_name=None)
    loaded, record = init_from.load(source, config, model, 10)
    _assert_same(loaded["params"]["layer4_0"],
                 variables["params"]["layer4_0"])
    assert loaded["params"]["fc"]["kernel"].shape == (2048, 10)
    assert record["kind"] == "published"


def test_a_hub_file_that_differs_from_its_published_hash_is_refused(
        local_hub):
    _, handler, _ = local_hub
    path = f"/timm/{NAME}/resolve/main/model.safetensors"
    good = handler.files[path]
    # The Hub publishes the SHA-256 of the right file; different bytes come.
    handler.files[path] = good[:-8] + bytes(8)
    handler.etag_of = {path: hashlib.sha256(good).hexdigest()}
    with pytest.raises(rx.weights.download.HashMismatchError,
                       match=hashlib.sha256(good).hexdigest()):
        rx.load_pretrained(NAME, **SMALL)
