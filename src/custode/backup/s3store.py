"""An S3-compatible store (``s3://BUCKET[/PREFIX]``) with the guarantees of ``store``.

Credentials, region and endpoint come from the standard AWS chain (environment,
``~/.aws/config``, instance roles; ``AWS_ENDPOINT_URL`` for MinIO, Ceph and the like)
unless the constructor is given an endpoint or region. Design:

* Never rewritten in place, concurrent writers safe: every write is conditional
  (``If-None-Match: *`` on PutObject and on CompleteMultipartUpload), so the service
  decides which of two racing writers wins. A HEAD first is only a cheap early refusal.
* Atomic writes: S3 makes an object visible only once its PUT or multipart upload
  completes; a failed multipart upload is aborted so no parts are left to pay for.
* boto3's transfer manager cannot send ``IfNoneMatch``, so files below
  ``MULTIPART_THRESHOLD`` are one streamed PutObject and larger ones a hand-driven
  multipart upload (parts of ``PART_SIZE``, read one at a time). Reads use the transfer
  manager (parallel ranged GETs).
* Reads of whole objects (``get_bytes``) are capped: an object larger than its caller's
  cap (by its Content-Length) is refused before its body is read.
* Errors are one line naming the store URL (and the endpoint when it cannot be reached),
  never a credential.
"""

from __future__ import annotations

import builtins
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]
from boto3.exceptions import Boto3Error  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    ConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)
from s3transfer.exceptions import RetriesExceededError  # type: ignore[import-untyped]

from custode.backup.store import (
    DEFAULT_READ_LIMIT,
    KeyExistsError,
    check_key,
    too_large,
)
from custode.errors import CustodeError, PathNotFoundError, StateError, UsageError

_MIB = 1 << 20
MULTIPART_THRESHOLD = 64 * _MIB  # files this size and larger go up in parts
PART_SIZE = 16 * _MIB  # memory held per upload; S3 wants >= 5 MiB except the last part
_MAX_PARTS = 10_000
_CONFLICT_RETRIES = 4  # 409 ConditionalRequestConflict: another write is in flight; retry
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DENIED = {
    "AccessDenied",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
}
_T = TypeVar("_T")


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://BUCKET[/PREFIX]`` into (bucket, prefix); raise ``UsageError`` if bad."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise UsageError(f"store {url}: not an s3:// URL; use s3://BUCKET[/PREFIX]")
    if "@" in parts.netloc:  # never echo it: it may hold a secret
        raise UsageError(
            "an s3:// store URL holds credentials; remove them from the URL and use "
            "the AWS environment or ~/.aws/credentials"
        )
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if parts.query or parts.fragment or not _BUCKET_RE.fullmatch(bucket):
        raise UsageError(f"store {url}: invalid S3 URL; use s3://BUCKET[/PREFIX]")
    if prefix:
        check_key(prefix)
    return bucket, prefix


class S3Store:
    """A store in an S3 bucket, under an optional key prefix."""

    def __init__(
        self, url: str, *, endpoint_url: str | None = None, region: str | None = None
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        try:
            session = boto3.session.Session(region_name=region)
            self._client: Any = session.client(
                "s3",
                endpoint_url=endpoint_url,
                config=Config(retries={"mode": "standard"}),
            )
        except BotoCoreError as e:
            raise UsageError(
                f"store {self.url}: cannot set up the S3 client ({e}); fix the AWS config "
                "or environment"
            ) from e
        self.endpoint = _safe_endpoint(self._client.meta.endpoint_url)
        # Mirror boto3's transfer manager: with default checksums on, declare CRC32 up
        # front, or S3 refuses parts that carry one.
        mode = getattr(self._client.meta.config, "request_checksum_calculation", None)
        self._checksums = mode == "when_supported"
        # Fail now, before a backup is built, if the bucket is missing or unreachable.
        self._call(
            "list",
            None,
            self._client.list_objects_v2,
            Bucket=self.bucket,
            Prefix=self._key(""),
            MaxKeys=1,
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- writing ----------------------------------------------------------------------------

    def put(self, key: str, src: Path) -> None:
        check_key(key)
        try:
            f = open(src, "rb")  # noqa: SIM115  (closed below, after the upload)
        except OSError as e:
            raise PathNotFoundError(f"cannot read {src}: {e.strerror}; check the path") from e
        with f:
            self._refuse_existing(key)
            size = os.fstat(f.fileno()).st_size
            if size < MULTIPART_THRESHOLD:
                self._put_object(key, f)
            else:
                self._put_multipart(key, f, size)

    def put_bytes(self, key: str, data: bytes) -> None:
        check_key(key)
        self._refuse_existing(key)
        self._put_object(key, data)

    def _refuse_existing(self, key: str) -> None:
        if self.size(key) is not None:
            raise KeyExistsError(self._exists_msg(key))

    def _put_object(self, key: str, body: BinaryIO | bytes) -> None:
        def put() -> object:
            if not isinstance(body, bytes):
                body.seek(0)
            return self._client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=body, IfNoneMatch="*"
            )

        self._conditional(key, put)

    def _put_multipart(self, key: str, f: BinaryIO, size: int) -> None:
        part_size = max(PART_SIZE, -(-size // _MAX_PARTS))
        algo = {"ChecksumAlgorithm": "CRC32"} if self._checksums else {}
        where = {"Bucket": self.bucket, "Key": self._key(key)}
        upload = self._call("write", key, self._client.create_multipart_upload, **where, **algo)
        upload_id = upload["UploadId"]
        try:
            parts: builtins.list[dict[str, Any]] = []
            while chunk := f.read(part_size):
                number = len(parts) + 1
                r = self._call(
                    "write",
                    key,
                    self._client.upload_part,
                    **where,
                    **algo,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                )
                part = {"ETag": r["ETag"], "PartNumber": number}
                if "ChecksumCRC32" in r:
                    part["ChecksumCRC32"] = r["ChecksumCRC32"]
                parts.append(part)
            self._conditional(
                key,
                lambda: self._client.complete_multipart_upload(
                    **where,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                ),
            )
        except BaseException:
            with suppress(Exception):  # best effort: a lifecycle rule can clean up the rest
                self._client.abort_multipart_upload(**where, UploadId=upload_id)
            raise

    def _conditional(self, key: str, write: Callable[[], object]) -> None:
        """Run a conditional write; 412 (or a 409 that outlives retries) means it exists."""
        for attempt in range(_CONFLICT_RETRIES + 1):
            try:
                write()
                return
            except ClientError as e:
                code = _code(e)
                if code == "ConditionalRequestConflict" and attempt < _CONFLICT_RETRIES:
                    time.sleep(0.1 * 2**attempt)
                    continue
                if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise KeyExistsError(self._exists_msg(key)) from e
                raise self._error(e, "write", key) from e
            except BotoCoreError as e:
                raise self._error(e, "write", key) from e

    def _exists_msg(self, key: str) -> str:
        return (
            f"store key {key!r} already exists in {self.url}; backups are never rewritten "
            "in place, write a new key"
        )

    def delete(self, key: str) -> None:
        check_key(key)
        self._call(
            "delete", key, self._client.delete_object, Bucket=self.bucket, Key=self._key(key)
        )

    # -- reading ----------------------------------------------------------------------------

    def get(self, key: str, dst: BinaryIO) -> None:
        check_key(key)
        self._read(key, lambda: self._client.download_fileobj(self.bucket, self._key(key), dst))

    def get_bytes(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        """The whole of a small object, refused by its Content-Length before its body is
        read when it holds more than ``limit`` bytes (and if more than that comes)."""
        check_key(key)

        def read() -> bytes:
            r = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            body = r["Body"]
            try:
                size = int(r.get("ContentLength") or 0)
                if size > limit:
                    raise too_large(self.locate(key), size, limit)
                chunks, total = [], 0
                # chunks, not read(limit + 1): http.client allocates all it may return
                for chunk in body.iter_chunks(_MIB):
                    chunks.append(chunk)
                    total += len(chunk)
                    if total > limit:
                        raise too_large(self.locate(key), total, limit)
                return b"".join(chunks)
            finally:
                body.close()

        return self._read(key, read)

    def locate(self, key: str) -> str:
        """Where ``key`` is, for messages: its URL."""
        return f"{self.url}/{key}"

    def strays(self, prefix: str) -> Iterator[tuple[str, str]]:
        """Nothing: an object store holds objects only (no FIFO, symlink or device)."""
        return iter(())

    def size(self, key: str) -> int | None:
        check_key(key)
        try:
            r = self._read(
                key, lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            )
        except _NotFound:
            return None
        return int(r["ContentLength"])

    def _read(self, key: str, read: Callable[[], _T]) -> _T:
        try:
            return read()
        except ClientError as e:
            if _code(e) in ("404", "NoSuchKey", "NotFound"):
                raise _NotFound(f"store key {key!r} not found in {self.url}") from e
            raise self._error(e, "read", key) from e
        except (BotoCoreError, Boto3Error, RetriesExceededError) as e:
            raise self._error(e, "read", key) from e

    def list(self, prefix: str) -> Iterator[str]:
        """Every key starting with ``prefix`` (a string prefix), sorted."""
        base = prefix.rpartition("/")[0]
        if base:
            check_key(f"{base}/x")
        elif prefix.startswith("/"):
            check_key(prefix)
        root = self._key("")
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        )
        found: builtins.list[str] = []
        try:
            for page in pages:
                found.extend(obj["Key"][len(root) :] for obj in page.get("Contents", ()))
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, "list", None) from e
        yield from sorted(k for k in found if _is_store_key(k))

    def remove_abandoned(self, prefix: str) -> int:
        """Abort the multipart uploads a killed writer left under ``prefix`` (invisible, but
        billed); call only while no writer can be at work there."""
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        )
        removed = 0
        try:
            for page in pages:
                for upload in page.get("Uploads", ()):
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, "clean up", None) from e
        return removed

    # -- errors -----------------------------------------------------------------------------

    def _call(self, what: str, key: str | None, fn: Callable[..., _T], **kwargs: Any) -> _T:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError, Boto3Error) as e:
            raise self._error(e, what, key) from e

    def _error(self, e: Exception, what: str, key: str | None) -> CustodeError:
        """One line for a boto error: what failed, where, and the fix; never a secret."""
        if isinstance(e, ClientError):
            return self._client_error(e, f"{what} {key!r}" if key else what)
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return PathNotFoundError(
                f"no usable AWS credentials for S3 store {self.url}; set AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(e, ConnectionError):
            return PathNotFoundError(
                f"cannot reach the S3 endpoint {self.endpoint} of store {self.url}; check "
                "the endpoint (AWS_ENDPOINT_URL) and the network"
            )
        detail = " ".join(str(e).split())
        return StateError(
            f"S3 store {self.url}: {what} failed at {self.endpoint} ({detail}); retry"
        )

    def _client_error(self, e: ClientError, doing: str) -> CustodeError:
        code = _code(e)
        if code == "NoSuchBucket":
            return PathNotFoundError(
                f"S3 bucket {self.bucket!r} of store {self.url} does not exist at "
                f"{self.endpoint}; create the bucket or fix the store URL"
            )
        if code in _DENIED or _status(e) == 403:
            return PathNotFoundError(
                f"S3 store {self.url} denied access to {doing} ({code}); check the AWS "
                "credentials (AWS_PROFILE or AWS_ACCESS_KEY_ID) and the bucket policy"
            )
        if code == "InvalidBucketName":
            return UsageError(f"store {self.url}: invalid bucket name; fix the store URL")
        msg = " ".join(str(e.response.get("Error", {}).get("Message", "")).split())
        return StateError(
            f"S3 store {self.url}: {doing} failed ({code}: {msg}); retry, or check the S3 "
            f"service at {self.endpoint}"
        )


class _NotFound(StateError):
    """A key that is not in the store (``size`` turns it into None)."""


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_store_key(key: str) -> bool:
    """False for objects other tools left that no store key can name (``a//b``, ``dir/``)."""
    try:
        check_key(key)
    except UsageError:
        return False
    return True


def _safe_endpoint(url: str) -> str:
    """The endpoint URL without any user:password part."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=host).geturl()
