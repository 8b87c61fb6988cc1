"""Checksums of saved checkpoints, to tell a damaged one from a good one.

After a save, process 0 writes ``<workdir>/checksums/<kind>-<step>.json``
with the SHA-256 and size of every file of the step's directory. A
checkpoint whose files no longer match is damaged (a bit flip, a truncated
or deleted file). Orbax itself makes saves atomic: a save killed midway
leaves only a temporary directory, which is never listed as a step.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

from train.workdir import CHECKSUM_DIR


def file_sha256(path: pathlib.Path) -> str:
    """The file's SHA-256 (hex), read in 1 MiB blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _files(step_dir: pathlib.Path) -> dict[str, dict]:
    return {str(p.relative_to(step_dir)): {"size": p.stat().st_size,
                                           "sha256": file_sha256(p)}
            for p in sorted(step_dir.rglob("*")) if p.is_file()}


def manifest_path(workdir: pathlib.Path, kind: str, step: int
                  ) -> pathlib.Path:
    return workdir / CHECKSUM_DIR / f"{kind}-{step}.json"


def write_manifest(workdir: pathlib.Path, kind: str, step: int,
                   step_dir: pathlib.Path) -> None:
    path = manifest_path(workdir, kind, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_files(step_dir), indent=1))
    tmp.replace(path)  # Atomic: a manifest is whole or absent.


def has_manifest(workdir: pathlib.Path, kind: str, step: int) -> bool:
    return manifest_path(workdir, kind, step).is_file()


def verify(workdir: pathlib.Path, kind: str, step: int,
           step_dir: pathlib.Path) -> str | None:
    """None if ``step_dir`` matches its manifest (or has none: a run killed
    between the save and the manifest); otherwise what is wrong."""
    path = manifest_path(workdir, kind, step)
    if not path.is_file():
        return None
    expected = json.loads(path.read_text())
    actual = {str(p.relative_to(step_dir)) for p in step_dir.rglob("*")
              if p.is_file()}
    missing = sorted(set(expected) - actual)
    if missing:
        return f"missing file(s) {missing[:3]}"
    for name, want in expected.items():
        file = step_dir / name
        if file.stat().st_size != want["size"]:
            return (f"{name} has {file.stat().st_size} bytes, "
                    f"{want['size']} were written")
        if file_sha256(file) != want["sha256"]:
            return f"{name} does not match its SHA-256 checksum"
    return None


def prune(workdir: pathlib.Path, kind: str, keep_steps) -> None:
    """Removes manifests of steps that orbax has deleted."""
    keep = {f"{kind}-{s}.json" for s in keep_steps}
    folder = workdir / CHECKSUM_DIR
    if folder.is_dir():
        for path in folder.glob(f"{kind}-*.json"):
            if path.name not in keep:
                path.unlink(missing_ok=True)
