"""fetch and its helpers, against a local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading

import pytest

from resnext_jax.weights.download import (HashMismatchError,
                                          WeightsUnavailableError, cache_dir,
                                          check_sha256, fetch, sha256_of,
                                          torchvision_hash_prefix)

PAYLOAD = bytes(range(256)) * 400  # 100 KiB: several reads, well under a second.
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """Serves ``files`` (path -> bytes); paths under ``/cut/`` announce the
    full length but send half and close. Counts requests per path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path.startswith("/cut/"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):  # Keep the test output quiet.
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    # A proxy from the environment must not see (or swallow) local requests.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    served = _Server()
    yield served
    served.close()


@pytest.fixture
def cache(monkeypatch, tmp_path):
    folder = tmp_path / "cache"
    monkeypatch.setenv("RESNEXT_JAX_HOME", str(folder))
    return folder


@pytest.fixture
def closed_port_url():
    """A URL on a port nothing listens on: instant connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/weights/model-{PAYLOAD_SHA256[:8]}.pth"


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_then_cached_without_request(server, cache):
    server.files["/w/model.pth"] = PAYLOAD
    url = server.url("/w/model.pth")
    path = fetch(url, sha256=PAYLOAD_SHA256, progress=False)
    assert path == cache / "model.pth"
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/w/model.pth"]
    assert _leftovers(cache) == ["model.pth"]  # No temporary file left.

    assert fetch(url, sha256=PAYLOAD_SHA256[:8], progress=False) == path
    assert server.requests == ["/w/model.pth"]  # Served from the cache.


def test_filename_and_directory(server, tmp_path, cache):
    server.files["/w/x"] = PAYLOAD
    path = fetch(server.url("/w/x"), sha256=PAYLOAD_SHA256, filename="named.pth",
                 directory=tmp_path / "deep" / "er", progress=False)
    assert path == tmp_path / "deep" / "er" / "named.pth"
    assert path.read_bytes() == PAYLOAD
    assert not cache.exists()


def test_wrong_hash_leaves_nothing(server, cache):
    server.files["/w/model.pth"] = PAYLOAD
    wrong = "0" * 64
    with pytest.raises(HashMismatchError) as caught:
        fetch(server.url("/w/model.pth"), sha256=wrong, progress=False)
    message = str(caught.value)
    assert wrong in message and PAYLOAD_SHA256 in message
    assert _leftovers(cache) == []


def test_connection_cut_halfway_leaves_nothing(server, cache):
    server.files["/cut/model.pth"] = PAYLOAD
    url = server.url("/cut/model.pth")
    with pytest.raises(WeightsUnavailableError) as caught:
        fetch(url, sha256=PAYLOAD_SHA256, progress=False)
    assert url in str(caught.value)
    assert _leftovers(cache) == []


def test_server_error_is_one_clear_line(server, cache):
    url = server.url("/missing.pth")
    with pytest.raises(WeightsUnavailableError) as caught:
        fetch(url, sha256=PAYLOAD_SHA256, progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert url in message and "404" in message and str(cache / "missing.pth") in message
    assert _leftovers(cache) == []


def test_offline_with_cached_file(cache, closed_port_url):
    cache.mkdir()
    cached = cache / closed_port_url.rsplit("/", 1)[1]
    cached.write_bytes(PAYLOAD)
    assert fetch(closed_port_url, sha256=torchvision_hash_prefix(closed_port_url),
                 progress=False) == cached


def test_offline_without_cached_file(cache, closed_port_url):
    with pytest.raises(WeightsUnavailableError) as caught:
        fetch(closed_port_url, sha256=PAYLOAD_SHA256, progress=False)
    message = str(caught.value)
    assert isinstance(caught.value, OSError)
    assert "\n" not in message
    assert closed_port_url in message
    assert str(cache / closed_port_url.rsplit("/", 1)[1]) in message
    assert _leftovers(cache) == []


def test_cached_file_with_wrong_hash_is_kept_and_refused(server, cache):
    server.files["/w/model.pth"] = PAYLOAD
    cache.mkdir()
    cached = cache / "model.pth"
    cached.write_bytes(b"not the weights")
    with pytest.raises(HashMismatchError) as caught:
        fetch(server.url("/w/model.pth"), sha256=PAYLOAD_SHA256, progress=False)
    message = str(caught.value)
    assert str(cached) in message and PAYLOAD_SHA256 in message and "delete or replace" in message
    assert cached.read_bytes() == b"not the weights"  # Not ours to delete.
    assert server.requests == []


@pytest.mark.parametrize("bad", ["", "abc", "xyz12345", "0" * 65])
def test_bad_expected_hash_is_refused_before_any_request(server, cache, bad):
    server.files["/w/model.pth"] = PAYLOAD
    with pytest.raises(ValueError, match="hex digits"):
        fetch(server.url("/w/model.pth"), sha256=bad, progress=False)
    assert server.requests == []


@pytest.mark.parametrize("filename", ["../escape.pth", "a/b.pth", ".."])
def test_filename_must_be_plain(cache, filename):
    with pytest.raises(ValueError, match="plain file name"):
        fetch("http://127.0.0.1:9/x.pth", sha256=PAYLOAD_SHA256, filename=filename)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RESNEXT_JAX_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "resnext_jax"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "resnext_jax"
    monkeypatch.setenv("RESNEXT_JAX_HOME", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_sha256_and_check(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    assert sha256_of(path) == PAYLOAD_SHA256
    check_sha256(path, PAYLOAD_SHA256)
    check_sha256(path, PAYLOAD_SHA256[:8].upper())
    with pytest.raises(HashMismatchError) as caught:
        check_sha256(path, "deadbeef")
    assert all(part in str(caught.value) for part in (str(path), "deadbeef", PAYLOAD_SHA256))


def test_torchvision_hash_prefix():
    url = "https://download.pytorch.org/models/resnext50_32x4d-7cdf4587.pth"
    assert torchvision_hash_prefix(url) == "7cdf4587"
    assert torchvision_hash_prefix("resnext101_32x8d-8ba56ff5.pth") == "8ba56ff5"
    assert torchvision_hash_prefix("resnext50_32x4d-1a0047aa.pth") == "1a0047aa"
    for name in ("resnext50_32x4d.pth", "model-xyz.pth", "https://x/y/model-7cdf4587.bin"):
        with pytest.raises(ValueError, match="hash"):
            torchvision_hash_prefix(name)
