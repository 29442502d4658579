"""S3FileStorage against moto's server over real HTTP, through the FileStorage methods only."""

from __future__ import annotations

import hashlib
import io
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from expert_pipeline.adapters.file_storage import FileMissing, FileTooLarge, StoredFile
from expert_pipeline.adapters.s3_file_storage import S3FileStorage
from expert_pipeline.core.ports import FileStorage
from expert_pipeline.resources.parts import S3FileStorageResource
from tests.s3_server import REGION, FaultProxy

MiB = 1024 * 1024
KEY = "experts/e1/f1/notes.txt"


class GeneratedStream:
    """`size` pseudo-random bytes, made as they are read (never all in memory); not seekable.

    Records the hash of what it handed out, how much was read and the largest single read asked.
    """

    def __init__(self, size: int, seed: int = 0, most_per_read: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._left = size
        self._most_per_read = most_per_read  # return short reads, as a socket may
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0
        self.largest_read = 0

    def read(self, amount: int | None = -1) -> bytes:
        if amount is None or amount < 0:
            amount = self._left
        self.largest_read = max(self.largest_read, amount)
        data = self._rng.randbytes(min(amount, self._left, self._most_per_read or self._left))
        self._left -= len(data)
        self.bytes_read += len(data)
        self.sha256.update(data)
        return data


def object_keys(s3_client: Any, bucket: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def unfinished_uploads(s3_client: Any, bucket: str) -> list[dict[str, Any]]:
    return s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


@pytest.mark.parametrize(
    "data", [b"", b"hello, expert\n", os.urandom(300_000)], ids=["empty", "small", "300kB"]
)
def test_save_then_fetch_round_trips_the_bytes(
    s3_storage: S3FileStorage, tmp_path: Path, data: bytes
) -> None:
    stored = s3_storage.save(KEY, io.BytesIO(data))

    assert stored == StoredFile(key=KEY, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    destination = tmp_path / "not" / "yet" / "there" / "notes.txt"
    assert s3_storage.fetch(KEY, destination) == len(data)
    assert destination.read_bytes() == data


@pytest.mark.parametrize("prefix", ["tenant-a", "tenant-a/", "/tenant-a/"])
def test_keys_are_stored_under_the_prefix(
    moto_endpoint: str, s3_bucket: str, s3_client: Any, tmp_path: Path, prefix: str
) -> None:
    def storage(prefix: str) -> S3FileStorage:
        return S3FileStorage(bucket=s3_bucket, prefix=prefix, endpoint_url=moto_endpoint, region_name=REGION)

    tenant_a, tenant_b = storage(prefix), storage("tenant-b")

    stored = tenant_a.save(KEY, io.BytesIO(b"a's notes"))
    tenant_b.save(KEY, io.BytesIO(b"b's notes"))

    assert stored.key == KEY  # callers keep the key they chose; the prefix is the storage's
    assert object_keys(s3_client, s3_bucket) == [f"tenant-a/{KEY}", f"tenant-b/{KEY}"]
    tenant_a.fetch(KEY, tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_bytes() == b"a's notes"
    assert tenant_b.delete_prefix("experts/e1/") == 1
    assert object_keys(s3_client, s3_bucket) == [f"tenant-a/{KEY}"]


def test_a_file_at_the_limit_is_accepted_and_one_byte_over_is_refused_before_any_upload(
    s3_proxy: FaultProxy, s3_client: Any, s3_bucket: str
) -> None:
    storage = S3FileStorage(bucket=s3_bucket, endpoint_url=s3_proxy.url, region_name=REGION)
    assert storage.save(KEY, io.BytesIO(b"x" * 100), max_bytes=100).size_bytes == 100

    with pytest.raises(FileTooLarge) as raised:
        storage.save("experts/e1/f2/big.txt", io.BytesIO(b"x" * 101), max_bytes=100)

    assert raised.value.limit == 100
    assert [r.method for r in s3_proxy.log if "big.txt" in r.path and r.method != "GET"] == []
    assert object_keys(s3_client, s3_bucket) == [KEY]


def test_a_too_large_multipart_upload_stops_at_the_limit_and_leaves_nothing(
    s3_proxy: FaultProxy, s3_bucket: str, s3_client: Any
) -> None:
    storage = S3FileStorage(bucket=s3_bucket, endpoint_url=s3_proxy.url, region_name=REGION)
    source = GeneratedStream(20 * MiB)
    limit = 10 * MiB

    with pytest.raises(FileTooLarge):
        storage.save("experts/e1/f1/huge.bin", source, max_bytes=limit)

    # The first 8 MiB part went up before the limit was passed; nothing beyond the limit did.
    uploaded = sum(r.body_bytes for r in s3_proxy.log if r.method == "PUT")
    assert uploaded <= limit
    assert source.bytes_read <= limit + 1 * MiB  # reading stopped right after the limit
    assert any(r.method == "DELETE" and "uploadId=" in r.path for r in s3_proxy.log)  # aborted
    assert object_keys(s3_client, s3_bucket) == []
    assert unfinished_uploads(s3_client, s3_bucket) == []


@pytest.mark.parametrize("most_per_read", [None, 64 * 1024], ids=["full-reads", "short-reads"])
def test_a_big_file_is_streamed_up_in_parts_and_back(
    s3_storage: S3FileStorage, s3_client: Any, s3_bucket: str, tmp_path: Path, most_per_read: int | None
) -> None:
    size = 12 * MiB
    source = GeneratedStream(size, seed=7, most_per_read=most_per_read)

    stored = s3_storage.save("experts/e1/f1/big.bin", source, max_bytes=size)

    assert stored.size_bytes == size == source.bytes_read
    assert stored.sha256 == source.sha256.hexdigest()
    assert source.largest_read <= 8 * MiB  # read piece by piece, never all at once
    etag = s3_client.head_object(Bucket=s3_bucket, Key="experts/e1/f1/big.bin")["ETag"].strip('"')
    assert etag.endswith("-2")  # a multipart upload of two parts
    destination = tmp_path / "big.bin"
    assert s3_storage.fetch("experts/e1/f1/big.bin", destination) == size
    digest = hashlib.sha256()
    with open(destination, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    assert digest.hexdigest() == stored.sha256


def test_fetching_a_missing_key_raises_file_missing_naming_it(
    s3_storage: S3FileStorage, tmp_path: Path
) -> None:
    destination = tmp_path / "out" / "gone.txt"

    with pytest.raises(FileMissing, match="experts/e1/f9/gone.txt") as raised:
        s3_storage.fetch("experts/e1/f9/gone.txt", destination)

    assert isinstance(raised.value, FileNotFoundError)
    assert s3_storage.bucket in str(raised.value)
    assert not destination.exists()


def test_delete_prefix_removes_exactly_one_experts_files(
    s3_storage: S3FileStorage, s3_client: Any, s3_bucket: str
) -> None:
    for key in ["experts/1/a/x.txt", "experts/1/b/y.txt", "experts/10/c/z.txt", "experts/2/d/w.txt"]:
        s3_storage.save(key, io.BytesIO(key.encode()))

    assert s3_storage.delete_prefix("experts/1/") == 2

    # "experts/1" is a folder: "experts/10/..." shares the characters but is another expert.
    assert object_keys(s3_client, s3_bucket) == ["experts/10/c/z.txt", "experts/2/d/w.txt"]
    assert s3_storage.delete_prefix("experts/1") == 0
    with pytest.raises(ValueError, match="invalid storage key"):
        s3_storage.delete_prefix("")  # never "everything"
    assert len(object_keys(s3_client, s3_bucket)) == 2


def test_delete_prefix_deletes_more_than_one_page_of_objects(
    s3_storage: S3FileStorage, s3_client: Any, s3_bucket: str
) -> None:
    keys = [f"experts/big/{i:05d}/f.txt" for i in range(1005)] + ["experts/other/0/f.txt"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"."), keys))

    assert s3_storage.delete_prefix("experts/big/") == 1005

    assert object_keys(s3_client, s3_bucket) == ["experts/other/0/f.txt"]


def test_transient_server_errors_are_retried_by_the_sdk(
    s3_proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    storage = S3FileStorage(bucket=s3_bucket, endpoint_url=s3_proxy.url, region_name=REGION)
    data = os.urandom(50_000)

    s3_proxy.fail_next(2, status=503)
    stored = storage.save(KEY, io.BytesIO(data))

    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert [(r.method, r.status) for r in s3_proxy.log] == [("PUT", 503), ("PUT", 503), ("PUT", 200)]
    assert len({r.path for r in s3_proxy.log}) == 1
    assert all(r.body_bytes == len(data) for r in s3_proxy.log)  # the body was sent again in full

    s3_proxy.fail_next(2, status=500)
    before = len(s3_proxy.log)
    assert storage.fetch(KEY, tmp_path / "notes.txt") == len(data)

    assert (tmp_path / "notes.txt").read_bytes() == data
    assert [r.status for r in s3_proxy.log[before:]][:3] == [500, 500, 200]
    assert len(s3_proxy.injected) == 4


def test_check_configuration_passes_with_a_bucket_and_credentials(s3_storage: S3FileStorage) -> None:
    assert s3_storage.check_configuration() is None


def test_check_configuration_names_missing_credentials(
    aws_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    with pytest.raises(ValueError, match="no AWS credentials.*AWS_ACCESS_KEY_ID") as raised:
        S3FileStorage(bucket="expert-files").check_configuration()
    assert "no bucket" not in str(raised.value)

    with pytest.raises(ValueError, match="no bucket.*no AWS credentials"):
        S3FileStorage(bucket="").check_configuration()


def test_check_configuration_names_a_missing_bucket(aws_credentials: None) -> None:
    with pytest.raises(ValueError, match="no bucket") as raised:
        S3FileStorage(bucket=" ").check_configuration()
    assert "credentials" not in str(raised.value)


def test_works_as_a_dagster_resource_built_from_its_config(
    moto_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    @dg.asset
    def stored_notes(file_storage: dg.ResourceParam[FileStorage]) -> int:
        return file_storage.save(KEY, io.BytesIO(b"from a run")).size_bytes

    resource = S3FileStorageResource(bucket=s3_bucket, prefix="runs", endpoint_url=moto_endpoint, region_name=REGION)
    result = dg.materialize([stored_notes], resources={"file_storage": resource})

    assert result.success
    assert result.output_for_node("stored_notes") == len(b"from a run")
    assert object_keys(s3_client, s3_bucket) == [f"runs/{KEY}"]
