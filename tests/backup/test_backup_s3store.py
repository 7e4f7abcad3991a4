"""S3Store beyond the shared conformance suite (tests/backup/test_backup_store.py): errors, the
multipart path, conditional writes and pagination, against a local moto server."""

import io
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from custode.backup import s3store
from custode.backup.s3store import S3Store
from custode.backup.stores import open_store
from custode.errors import ExitCode, PathNotFoundError, StateError, UsageError
from fixtures.cli import CliResult
from fixtures.s3server import S3Server

MIB = 1 << 20


@pytest.fixture
def s3(s3_env: S3Server, s3_bucket: str) -> S3Store:
    return S3Store(f"s3://{s3_bucket}/pre", endpoint_url=s3_env.endpoint)


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of 6 MiB and more go up in 5 MiB parts (S3's smallest)."""
    monkeypatch.setattr(s3store, "MULTIPART_THRESHOLD", 6 * MIB)
    monkeypatch.setattr(s3store, "PART_SIZE", 5 * MIB)


def _one_line(e: pytest.ExceptionInfo[Exception]) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# -- errors -------------------------------------------------------------------------------


def test_missing_bucket(s3_env: S3Server) -> None:
    with pytest.raises(PathNotFoundError) as e:
        S3Store("s3://no-such-bucket/x", endpoint_url=s3_env.endpoint)
    msg = _one_line(e)
    assert "'no-such-bucket'" in msg
    assert "does not exist" in msg
    assert "create the bucket" in msg
    assert e.value.exit_code == ExitCode.NOT_FOUND


def test_wrong_credentials(
    s3_env: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.core import enable_iam_authentication

    secret = "not-the-secret-0123456789"  # noqa: S105  (a wrong one, on purpose)
    bad = s3_env.client(aws_access_key_id="AKIANOTAKEY", aws_secret_access_key=secret)
    with enable_iam_authentication():  # moto checks keys only when asked (this worker only)
        with pytest.raises(ClientError):  # the fake really refuses these keys
            bad.list_objects_v2(Bucket=s3_bucket)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKEY")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        with pytest.raises(PathNotFoundError) as e:
            S3Store(f"s3://{s3_bucket}", endpoint_url=s3_env.endpoint)
    msg = _one_line(e)
    assert f"s3://{s3_bucket}" in msg
    assert "denied access" in msg
    assert "credentials" in msg
    assert secret not in msg
    assert "AKIANOTAKEY" not in msg


def test_endpoint_refused(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retry backoff in the test
    with pytest.raises(PathNotFoundError) as e:
        S3Store("s3://bucket/x", endpoint_url=f"http://127.0.0.1:{port}")
    msg = _one_line(e)
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in msg
    assert "s3://bucket/x" in msg


def test_credentials_in_url_refused_without_echo() -> None:
    with pytest.raises(UsageError, match="holds credentials") as e:
        S3Store("s3://AKIAXXXX:hunter2@bucket/x")
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize("url", ["s3://", "s3:///x", "s3://b/a/../c", "s3://b/.tmp-x", "s3://b#f"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(UsageError):
        S3Store(url)


# -- open_store ---------------------------------------------------------------------------


def test_open_store_s3(s3_env: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_store(f"s3://{s3_bucket}/a/b/", s3_endpoint=s3_env.endpoint, s3_region="eu-west-1")
    assert isinstance(s, S3Store)
    assert s.url == f"s3://{s3_bucket}/a/b"
    s.put_bytes("k", b"v")
    assert s3_env.client().get_object(Bucket=s3_bucket, Key="a/b/k")["Body"].read() == b"v"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint)  # the AWS chain is honoured
    assert open_store(s.url).get_bytes("k") == b"v"


# -- writes -------------------------------------------------------------------------------


def test_multipart_upload(s3: S3Store, s3_env: S3Server, tmp_path: Path, small_parts: None) -> None:
    data = os.urandom(12 * MIB + 7)
    src = tmp_path / "big"
    src.write_bytes(data)
    s3.put("big", src)
    head = s3_env.client().head_object(Bucket=s3.bucket, Key="pre/big")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    out = io.BytesIO()
    s3.get("big", out)
    assert out.getvalue() == data
    assert s3.size("big") == len(data)
    with pytest.raises(StateError, match="already exists"):
        s3.put("big", src)


def test_conditional_write_refuses_when_the_early_check_misses(
    s3: S3Store,
    s3_env: S3Server,
    tmp_path: Path,
    small_parts: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The HEAD before a write is only a shortcut: the conditional PUT/complete decides."""
    s3.put_bytes("small", b"first")
    src = tmp_path / "big"
    src.write_bytes(b"x" * 7 * MIB)
    s3.put("big", src)
    monkeypatch.setattr(S3Store, "_refuse_existing", lambda self, key: None)
    with pytest.raises(StateError, match="already exists"):
        s3.put_bytes("small", b"second")
    with pytest.raises(StateError, match="already exists"):
        s3.put("big", tmp_path / "big")
    assert s3.get_bytes("small") == b"first"
    client = s3_env.client()
    assert client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []  # aborted


def test_concurrent_multipart_puts_one_wins(
    s3: S3Store, s3_env: S3Server, tmp_path: Path, small_parts: None
) -> None:
    for fill in (1, 2):
        (tmp_path / str(fill)).write_bytes(bytes([fill]) * (11 * MIB))
    barrier = threading.Barrier(2)
    results: dict[int, str] = {}

    def put(fill: int) -> None:
        barrier.wait()
        try:
            s3.put("k", tmp_path / str(fill))
            results[fill] = "ok"
        except StateError as e:
            results[fill] = str(e)

    threads = [threading.Thread(target=put, args=(fill,)) for fill in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(results.values()).count("ok") == 1, results
    assert "already exists" in next(v for v in results.values() if v != "ok")
    winner = next(f for f, v in results.items() if v == "ok")
    assert s3.get_bytes("k") == bytes([winner]) * (11 * MIB)
    assert s3_env.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_conflict_409_is_retried(s3: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """409 ConditionalRequestConflict: another write was in flight; retry, then decide."""
    real = s3._client.put_object
    calls: list[int] = []

    def put_object(**kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ClientError(
                {"Error": {"Code": "ConditionalRequestConflict", "Message": "conflict"}},
                "PutObject",
            )
        return real(**kwargs)

    monkeypatch.setattr(s3._client, "put_object", put_object)
    monkeypatch.setattr(s3store.time, "sleep", lambda _: None)
    s3.put_bytes("k", b"v")
    assert len(calls) == 2
    assert s3.get_bytes("k") == b"v"


# -- listing ------------------------------------------------------------------------------


@pytest.mark.slow  # 1,050 PUTs to set up
def test_list_paginates_past_1000_keys(s3: S3Store, s3_env: S3Server) -> None:
    client = s3_env.client()
    keys = [f"many/{i:05d}" for i in range(1050)]
    for k in keys:
        client.put_object(Bucket=s3.bucket, Key=f"pre/{k}", Body=b"")
    client.put_object(Bucket=s3.bucket, Key="outside/pre", Body=b"")
    assert list(s3.list("")) == keys
    assert list(s3.list("many/01")) == [k for k in keys if k.startswith("many/01")]


def test_list_hides_objects_no_key_can_name(s3: S3Store, s3_env: S3Server) -> None:
    client = s3_env.client()
    for k in ["pre/ok", "pre/dir/", "pre/a//b", "pre/.tmp-1/x", "pre/c/../d", "prefix-sibling"]:
        client.put_object(Bucket=s3.bucket, Key=k, Body=b"")
    assert list(s3.list("")) == ["ok"]


# -- without the s3 extra -----------------------------------------------------------------


@pytest.mark.parametrize("missing", ["boto3", "botocore.config", "s3transfer.exceptions"])
def test_s3_url_without_the_s3_extra_names_it(
    missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """boto3 is the optional ``s3`` extra: an s3:// store without it is one usage-error
    line naming the install command, not a traceback."""
    monkeypatch.delitem(sys.modules, "custode.backup.s3store")  # imported again, and fails
    monkeypatch.setitem(sys.modules, missing, None)  # importing it now raises
    with pytest.raises(UsageError) as e:
        open_store("s3://bucket/prefix")
    msg = _one_line(e)
    assert msg.startswith("store s3://bucket/prefix: S3 support is not installed")
    assert "pip install 'custode[s3]'" in msg
    assert e.value.exit_code == ExitCode.USAGE


def test_another_missing_module_is_not_blamed_on_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "custode.backup.s3store")
    monkeypatch.setitem(sys.modules, "custode.backup.store", None)
    with pytest.raises(ModuleNotFoundError):
        open_store("s3://bucket/prefix")


def test_cli_without_boto3_says_how_to_install_it(
    custode: Callable[..., CliResult], tmp_path: Path
) -> None:
    """The whole command, in a Python where boto3 cannot be imported: exit 2, one line."""
    hide = tmp_path / "hide"
    (hide / "boto3").mkdir(parents=True)
    (hide / "boto3" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'boto3'\", name='boto3')\n"
    )
    r = custode("snapshots", "--store", "s3://bucket/x", env={"PYTHONPATH": str(hide)})
    assert r.code == ExitCode.USAGE, r.stderr
    assert "pip install 'custode[s3]'" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
