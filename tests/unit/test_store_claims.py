"""images/store.py: operations claim what they rely on, and a rollback never removes another's.

Each test drives two operations on one store in the order that used to break
an image: operation A creates a blob or layer, operation B finds it and relies
on it, A fails. Real files, real flocks, a real second process for the
cross-process and crashed-owner cases; no root needed.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hanok.images.store import Operation, Store


class Boom(Exception):
    """The failure that makes an operation roll back."""


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
            info.uid, info.gid = os.getuid(), os.getgid()
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"))


@contextlib.contextmanager
def failing_operation(store: Store) -> Iterator[Operation]:
    """An operation that fails (Boom) when the block ends: its rollback runs right there."""
    with pytest.raises(Boom):
        with store.operation() as op:
            yield op
            raise Boom()


def _claim_files(store: Store) -> list[str]:
    return os.listdir(store.claims_dir) if os.path.isdir(store.claims_dir) else []


def test_failed_operation_removes_what_it_created_and_its_claims(store: Store) -> None:
    kept = store.put_bytes(b"there before\n")
    with failing_operation(store) as op:
        assert op.has_blob(kept)
        new = store.put_bytes(b"mine\n", op=op)
        assert store.has_blob(new) and len(_claim_files(store)) == 1
    assert store.blobs() == [kept]
    assert _claim_files(store) == []


def test_successful_operation_leaves_no_claim_files(store: Store) -> None:
    with store.operation() as op:
        digest = store.put_bytes(b"kept\n", op=op)
    assert store.blobs() == [digest]
    assert _claim_files(store) == []


def test_rollback_keeps_a_blob_another_operation_in_flight_relies_on(store: Store) -> None:
    with store.operation() as b:
        with failing_operation(store) as a:
            shared = store.put_bytes(b"shared\n", op=a)
            own = store.put_bytes(b"only a's\n", op=a)
            assert b.has_blob(shared)  # B finds A's blob and relies on it
        assert store.has_blob(shared)
        assert not store.has_blob(own)
    assert store.blobs() == [shared]


def test_rollback_keeps_a_blob_an_image_tagged_meanwhile_references(store: Store) -> None:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _digest(config), "size": len(config)},
                           "layers": []}).encode()
    with failing_operation(store) as a:
        store.put_bytes(config, op=a)
        own = store.put_bytes(b"only a's\n", op=a)
        with store.operation() as b:  # B reuses A's config, tags its image and ends
            assert b.has_blob(_digest(config))
            store.put_bytes(manifest, op=b)
            store.tag("localhost/b:1", _digest(manifest))
    assert sorted(store.blobs()) == sorted([_digest(config), _digest(manifest)])
    assert not store.has_blob(own)
    assert store.image("localhost/b:1").config == {"rootfs": {"type": "layers", "diff_ids": []}}


def test_rollback_keeps_a_layer_another_operation_relies_on(store: Store) -> None:
    shared_tar, own_tar = _layer_tar({"shared": b"s\n"}), _layer_tar({"own": b"o\n"})
    shared, own = _digest(shared_tar), _digest(own_tar)
    with store.operation() as b:
        with failing_operation(store) as a:
            assert store.unpack_layer_stream(io.BytesIO(shared_tar), shared, a)[1]
            assert store.unpack_layer_stream(io.BytesIO(own_tar), own, a)[1]
            assert b.has_layer(shared)
        assert store.layers() == [shared]
        assert Path(store.layer_path(shared), "shared").read_bytes() == b"s\n"
    assert os.listdir(store.tmp_dir) == []


def test_layer_and_blob_from_one_pass_are_undone_together(store: Store) -> None:
    tar = _layer_tar({"f": b"x" * 5000})
    with failing_operation(store) as a:
        assert store.ingest_layer(io.BytesIO(tar), _digest(tar), len(tar), _digest(tar), a) == (True, True)
    assert store.blobs() == [] and store.layers() == []
    assert os.listdir(store.tmp_dir) == []


def test_claim_of_another_live_process_counts(store: Store) -> None:
    blob = b"claimed by the child\n"
    stop_r, stop_w = os.pipe()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child claims the blob, says so, and waits to be told to end
        code = 1
        try:
            os.close(r)
            os.close(stop_w)
            op = Operation(store)
            op.claim_blob(_digest(blob))
            os.write(w, b"x")
            os.read(stop_r, 1)
            op.release()
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(stop_r)
    try:
        with failing_operation(store) as a:
            assert os.read(r, 1) == b"x"
            store.put_bytes(blob, op=a)
        assert store.blobs() == [_digest(blob)]
    finally:
        os.close(stop_w)  # EOF: the child ends
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _claim_files(store) == []


def _claim_in_a_process_that_dies(claim: Callable[[Operation], object], store: Store) -> None:
    """A forked child claims and dies without releasing: its claim file stays, its flock does not."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            claim(Operation(store))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(_claim_files(store)) == 1


def test_claims_of_a_crashed_process_do_not_count(store: Store) -> None:
    blob = b"claimed by a process that died\n"
    _claim_in_a_process_that_dies(lambda op: op.claim_blob(_digest(blob)), store)
    with failing_operation(store) as a:
        store.put_bytes(blob, op=a)
    assert store.blobs() == []
    assert _claim_files(store) == []  # the dead one's file went with the rollback


def test_gc_drops_claim_files_of_crashed_processes(store: Store) -> None:
    _claim_in_a_process_that_dies(lambda op: op.claim_layer("sha256:" + "a" * 64), store)
    store.gc()
    assert _claim_files(store) == []


def test_a_claim_after_a_rollback_finds_the_blob_gone(store: Store) -> None:
    with failing_operation(store) as a:
        digest = store.put_bytes(b"short-lived\n", op=a)
    with store.operation() as b:
        assert not b.has_blob(digest)  # so B fetches it again
        assert store.put_bytes(b"short-lived\n", op=b) == digest
    assert store.blobs() == [digest]
