"""Opening a store by its URL: a directory (``custode.backup.store``) or S3
(``custode.backup.s3store``, whose boto3 is loaded only when an ``s3://`` URL is used)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from custode.backup.store import LocalStore, Store
from custode.errors import UsageError


def open_store(url: str, *, s3_endpoint: str | None = None, s3_region: str | None = None) -> Store:
    """A store for a plain path, a ``file://`` or an ``s3://BUCKET[/PREFIX]`` URL.

    ``s3_endpoint`` and ``s3_region`` override the AWS environment and config for S3.
    """
    if "://" not in url:
        return LocalStore(Path(url))
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return LocalStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        from custode.backup.s3store import S3Store  # noqa: PLC0415  (boto3 only when used)

        return S3Store(url, endpoint_url=s3_endpoint, region=s3_region)
    raise UsageError(
        f"store {url}: unsupported URL; use a directory path, a file:// or an s3:// URL"
    )
