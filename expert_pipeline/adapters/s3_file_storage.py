"""Uploaded files in an S3 bucket (or any S3-compatible store), behind the `FileStorage` protocol.

Keys are the same as for `LocalFileStorage` (`experts/{expert_id}/{file_id}/{filename}`), stored
as `{prefix}{key}` in `bucket`. Credentials come from boto3's own chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, shared files, container/instance roles), never from config;
the endpoint can be given here or through AWS_ENDPOINT_URL, which boto3 honours itself.

* `save` streams: the upload reads the source once, front to back, through `_MeteredReader`,
  which hashes and counts every byte and raises `FileTooLarge` as soon as the count passes
  `max_bytes`. The reader says it is not seekable, so s3transfer takes its non-seekable path:
  it reads one part (8 MiB) at a time into memory and uploads it, multipart above 8 MiB. A
  seekable reader would let s3transfer read parts out of order from several threads, which
  breaks the running hash. A failed upload never completes, so it leaves no object behind, and
  s3transfer aborts an unfinished multipart upload (`save` checks for one anyway).
* Transient failures (5xx, SlowDown and other throttling, connection errors) are retried by
  botocore's "standard" retry mode: 5 retries, so up to 6 attempts per request. Upload bodies are
  in-memory parts, so botocore can rewind and resend them. Every answer, retried ones included,
  is counted through botocore's `response-received` event (`take_trouble`), and a fetch that
  still fails when the retries run out raises `ServiceUnavailable`, saying what S3 answered.
* `fetch` raises `FileMissing` for a missing object (404 / NoSuchKey). `download_file` starts
  with a HeadObject, whose bare 404 cannot tell a missing bucket from a missing key, so a missing
  bucket also reads as `FileMissing` (the message names the bucket). Without s3:ListBucket
  permission S3 answers 403 for a missing key; that stays a botocore `ClientError`.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, PrivateAttr

from expert_pipeline.adapters.service_trouble import NO_ANSWER, ServiceUnavailable, TroubleLog
from expert_pipeline.core.ports import FileMissing, FileTooLarge, StoredFile

__all__ = ["S3FileStorage"]

log = logging.getLogger(__name__)

_MiB = 1024 * 1024
# How much `_MeteredReader` asks its source for at once; s3transfer asks for whole parts.
_SOURCE_READ_BYTES = 1 * _MiB
# Multipart above 8 MiB, in 8 MiB parts (s3transfer's defaults, stated so they are not a surprise).
# 8 MiB x 10,000 parts (S3's limit) caps one file at ~78 GiB.
_PART_BYTES = 8 * _MiB
# DeleteObjects takes at most 1,000 keys per request.
_DELETE_BATCH = 1000
_RETRIES = {"mode": "standard", "max_attempts": 5}  # botocore's max_attempts counts retries only
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
# Throttling answers that are not 5xx (S3 itself throttles with 503 SlowDown).
_THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
    }
)


class S3FileStorage(BaseModel):
    """Files in an S3 bucket; keys are stored under `prefix` (normalised to end with "/").

    Keys must be plain relative paths ("a/b/c": no empty, "." or ".." parts), else ValueError,
    as `LocalFileStorage` refuses keys outside its root. The boto3 client is made on first use.
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region_name: str | None = None

    _client: Any = PrivateAttr(default=None)
    _client_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _trouble: TroubleLog = PrivateAttr(default_factory=TroubleLog)

    # -- FileStorage ------------------------------------------------------------------------

    def save(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> StoredFile:
        object_key = self._object_key(key)
        reader = _MeteredReader(stream, max_bytes)
        try:
            self._get_client().upload_fileobj(reader, self.bucket, object_key, Config=_transfer_config())
        except FileTooLarge:
            self._abort_unfinished_uploads(object_key)
            raise
        return StoredFile(key=key, size_bytes=reader.size, sha256=reader.hexdigest())

    def fetch(self, key: str, destination: Path) -> int:
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotocoreConnectionError

        object_key = self._object_key(key)
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        where = f"s3://{self.bucket}/{object_key}"
        try:
            # Streams to a temporary file next to `destination` and renames it into place, so a
            # failed download never leaves a partial file under the destination's name.
            self._get_client().download_file(
                self.bucket, object_key, str(destination), Config=_transfer_config()
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in _NOT_FOUND_CODES:
                raise FileMissing(f"stored file is missing: {key} ({where})") from exc
            meta = exc.response.get("ResponseMetadata", {})
            status = int(meta.get("HTTPStatusCode") or 0)
            if status >= 500 or status == 429 or code in _THROTTLING_CODES:
                raise ServiceUnavailable(
                    f"fetching {where}: {exc}",
                    service="file storage",
                    status=status,
                    attempts=int(meta.get("RetryAttempts") or 0) + 1,
                ) from exc
            raise
        except (BotocoreConnectionError, HTTPClientError) as exc:  # refused, reset, timed out
            raise ServiceUnavailable(
                f"fetching {where}: {exc}", service="file storage", status=NO_ANSWER, attempts=1
            ) from exc
        return destination.stat().st_size

    def delete_prefix(self, prefix: str) -> int:
        # Like the local storage, this deletes a "directory": "experts/1" must not also match
        # "experts/10/...", and an empty prefix (everything) is refused.
        object_prefix = self._object_key(prefix.rstrip("/")) + "/"
        client = self._get_client()
        deleted = 0
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=object_prefix
        ):
            keys = [item["Key"] for item in page.get("Contents", [])]
            for start in range(0, len(keys), _DELETE_BATCH):
                batch = keys[start : start + _DELETE_BATCH]
                response = client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
                # DeleteObjects answers 200 even when some keys could not be deleted.
                errors = response.get("Errors", [])
                deleted += len(batch) - len(errors)
                if errors:
                    shown = ", ".join(
                        f"{e.get('Key')} ({e.get('Code')}: {e.get('Message')})" for e in errors[:5]
                    )
                    raise OSError(
                        f"could not delete {len(errors)} object(s) under "
                        f"s3://{self.bucket}/{object_prefix} ({deleted} deleted so far): {shown}"
                    )
        return deleted

    def list_folders(self, prefix: str) -> list[str]:
        """The "folders" directly below `prefix`: one ListObjectsV2 walk with Delimiter="/"."""
        object_prefix = self._object_key(prefix.rstrip("/")) + "/"
        names: list[str] = []
        for page in (
            self._get_client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=object_prefix, Delimiter="/")
        ):
            for common in page.get("CommonPrefixes", []):
                names.append(common["Prefix"][len(object_prefix) :].rstrip("/"))
        return sorted(name for name in names if name)

    def modified_at(self, prefix: str) -> datetime | None:
        """The newest LastModified below the folder `prefix`; None if it holds no object.

        An upload still in progress is not an object yet (S3 shows objects only when complete).
        """
        object_prefix = self._object_key(prefix.rstrip("/")) + "/"
        newest: datetime | None = None
        for page in (
            self._get_client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=object_prefix)
        ):
            for item in page.get("Contents", []):
                stamp = item["LastModified"].astimezone(UTC)
                newest = stamp if newest is None or stamp > newest else newest
        return newest

    # -- startup check ----------------------------------------------------------------------

    def check_configuration(self) -> None:
        """Raise ValueError naming what is missing, so a half-configured deployment fails at start.

        Checks only what can be known without a request: a bucket name, and credentials that
        boto3's chain can resolve. (On EC2 the chain may ask the instance metadata service.)
        """
        import boto3

        problems = []
        if not self.bucket.strip():
            problems.append("no bucket: set S3FileStorage.bucket to the bucket's name")
        if boto3.session.Session().get_credentials() is None:
            problems.append(
                "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                "AWS_PROFILE / a shared credentials file, or run with an IAM role)"
            )
        if problems:
            raise ValueError("S3 file storage is not configured: " + "; ".join(problems))

    # -- internals --------------------------------------------------------------------------

    @property
    def _key_prefix(self) -> str:
        prefix = self.prefix.strip("/")
        return f"{prefix}/" if prefix else ""

    def _object_key(self, key: str) -> str:
        # Keys are built by us from sanitised names; reject anything that would not be a plain
        # relative path (as the local storage does), including "" (which would be the whole store).
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid storage key: {key!r}")
        return self._key_prefix + key

    def _get_client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                # boto3 sessions are not thread-safe, clients are: one session per client.
                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url or None,
                    region_name=self.region_name or None,
                    config=Config(retries=dict(_RETRIES)),
                )
                # Every attempt, including the ones botocore retries, passes through here.
                self._client.meta.events.register("response-received.s3.*", self._note_answer)
            return self._client

    def _note_answer(
        self, response_dict: dict[str, Any] | None = None, exception: Exception | None = None, **_: Any
    ) -> None:
        if response_dict is not None:
            self._trouble.record(int(response_dict.get("status_code", 0)))
        elif exception is not None:
            self._trouble.record(NO_ANSWER)

    def take_trouble(self) -> dict[int, int]:
        """Retried answers (HTTP status -> count; 0 = no answer) since the last call."""
        return self._trouble.take()

    def _abort_unfinished_uploads(self, object_key: str) -> None:
        """Abort multipart uploads left for `object_key` (s3transfer normally already has)."""
        client = self._get_client()
        try:
            response = client.list_multipart_uploads(Bucket=self.bucket, Prefix=object_key)
            for upload in response.get("Uploads", []):
                if upload["Key"] == object_key:
                    client.abort_multipart_upload(
                        Bucket=self.bucket, Key=object_key, UploadId=upload["UploadId"]
                    )
        except Exception:
            log.warning(
                "could not check for unfinished uploads of s3://%s/%s",
                self.bucket,
                object_key,
                exc_info=True,
            )


class _MeteredReader:
    """Reads `source` once, front to back: hashes and counts it and enforces `max_bytes`.

    `read(n)` returns exactly n bytes until the end (s3transfer decides "single PUT or multipart"
    and sizes parts by whether it got a full read), asking the source for at most 1 MiB at a time.
    """

    def __init__(self, source: BinaryIO, max_bytes: int | None) -> None:
        self._source = source
        self._max_bytes = max_bytes
        self._digest = hashlib.sha256()
        self._at_end = False
        self.size = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, amount: int | None = -1) -> bytes:
        if amount is None or amount < 0:
            amount = sys.maxsize
        blocks: list[bytes] = []
        got = 0
        while got < amount and not self._at_end:
            block = self._source.read(min(_SOURCE_READ_BYTES, amount - got))
            if not block:
                self._at_end = True
                break
            self.size += len(block)
            if self._max_bytes is not None and self.size > self._max_bytes:
                raise FileTooLarge(self._max_bytes)
            self._digest.update(block)
            blocks.append(block)
            got += len(block)
        return b"".join(blocks)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=_PART_BYTES,
        multipart_chunksize=_PART_BYTES,
        # Never the CRT transfer client (used when awscrt happens to be installed): it reads
        # file objects its own way; these semantics are s3transfer's.
        preferred_transfer_client="classic",
    )
