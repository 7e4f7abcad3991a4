"""Opening a store by its URL: a directory (``custode.backup.store``) or S3
(``custode.backup.s3store``, whose boto3 is loaded only when an ``s3://`` URL is used; it
is the optional ``s3`` extra, so a missing boto3 is a usage error naming that extra)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from custode.backup.store import LocalStore, Store
from custode.errors import UsageError

# The distributions of the ``s3`` extra, by import name: a ModuleNotFoundError for one of
# them means the extra is not installed (any other missing module is a real bug).
_S3_EXTRA_MODULES = frozenset({"boto3", "botocore", "s3transfer"})


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
        try:
            from custode.backup.s3store import S3Store  # noqa: PLC0415  (boto3 only when used)
        except ModuleNotFoundError as e:
            if (e.name or "").partition(".")[0] not in _S3_EXTRA_MODULES:
                raise
            raise UsageError(
                f"store {url}: S3 support is not installed (no module {e.name!r}); "
                "install it with: pip install 'custode[s3]'"
            ) from None
        return S3Store(url, endpoint_url=s3_endpoint, region=s3_region)
    raise UsageError(
        f"store {url}: unsupported URL; use a directory path, a file:// or an s3:// URL"
    )
