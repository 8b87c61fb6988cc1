"""Writing files without losing what was there: whole or not at all, with
the permissions the user's umask gives, and never over what we did not
write."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from typing import Iterator


def umask_mode(base: int) -> int:
    """``base`` (0o666 for files, 0o777 for directories) less the umask:
    what ``open`` or ``mkdir`` would have given. ``tempfile`` creates 0600
    and 0700 instead, which a server's account cannot read."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temporary path beside ``path``; once the block has written
    it, it replaces ``path`` in one rename. On any error ``path`` is left as
    it was and the temporary file is removed."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file (through links too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def cache_path(env_var: str, *parts: str) -> pathlib.Path:
    """One of the library's caches: ``$<env_var>`` where set, else
    ``$XDG_CACHE_HOME/resnext_jax/<parts>`` (``~/.cache/resnext_jax/...``)."""
    explicit = os.environ.get(env_var)
    if explicit:
        return pathlib.Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    return pathlib.Path(base).expanduser().joinpath("resnext_jax", *parts)
