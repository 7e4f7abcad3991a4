"""age encryption of backups: round trips, recipients, identity files and clear failures."""

import io
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from custode.backup.crypto import (
    Identity,
    decrypt_file,
    encrypt_file,
    generate_identity,
    load_identity,
    parse_recipient,
    public_key,
)
from custode.errors import CustodeError, ExitCode, IntegrityError, PathNotFoundError, UsageError

SECRET = "AGE-SECRET-KEY-1"  # noqa: S105  (the key prefix, not a secret)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "key.txt"
    generate_identity(path)
    return path


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    path = tmp_path / "plain.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return path


def _encrypt(src: Path, *keys: Path) -> bytes:
    out = io.BytesIO()
    encrypt_file(src, out, [parse_recipient(public_key(load_identity(k))) for k in keys])
    return out.getvalue()


def _decrypt(data: bytes, key: Path) -> bytes:
    out = io.BytesIO()
    decrypt_file(io.BytesIO(data), out, [load_identity(key)], name="plain.bin.age")
    return out.getvalue()


def _secret_of(key: Path) -> str:
    return next(line for line in key.read_text().splitlines() if line.startswith(SECRET))


# -- encryption and decryption --------------------------------------------------------


def test_round_trip_of_a_multi_mib_file(key: Path, plain: Path) -> None:
    data = _encrypt(plain, key)
    assert data.startswith(b"age-encryption.org/v1\n")
    assert _decrypt(data, key) == plain.read_bytes()


def test_empty_file_round_trips(key: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert _decrypt(_encrypt(empty, key), key) == b""


def test_each_of_two_recipients_can_decrypt(tmp_path: Path, plain: Path) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    generate_identity(first)
    generate_identity(second)
    data = _encrypt(plain, first, second)
    assert _decrypt(data, first) == plain.read_bytes()
    assert _decrypt(data, second) == plain.read_bytes()


def test_wrong_identity_fails_clearly(key: Path, tmp_path: Path, plain: Path) -> None:
    other = tmp_path / "other.txt"
    generate_identity(other)
    with pytest.raises(IntegrityError) as caught:
        _decrypt(_encrypt(plain, key), other)
    assert str(caught.value) == "cannot decrypt plain.bin.age: wrong identity or damaged file"
    assert caught.value.exit_code == ExitCode.INTEGRITY
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("offset", [5, 120, 100_000, -20])
def test_a_flipped_byte_fails(key: Path, plain: Path, offset: int) -> None:
    data = bytearray(_encrypt(plain, key))
    data[offset] ^= 0x01
    with pytest.raises(IntegrityError, match="wrong identity or damaged file"):
        _decrypt(bytes(data), key)


@pytest.mark.parametrize("keep", [0, 40, 200, -1, -70_000])
def test_truncated_ciphertext_fails(key: Path, plain: Path, keep: int) -> None:
    data = _encrypt(plain, key)
    with pytest.raises(IntegrityError, match="wrong identity or damaged file"):
        _decrypt(data[:keep], key)


def test_io_errors_of_the_destination_are_not_reported_as_damage(key: Path, plain: Path) -> None:
    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space") as caught:
        decrypt_file(io.BytesIO(_encrypt(plain, key)), Full(), [load_identity(key)])  # type: ignore[arg-type]
    assert not isinstance(caught.value, CustodeError)


def test_encrypting_to_no_recipients_is_refused(plain: Path) -> None:
    with pytest.raises(UsageError, match="no recipients"):
        encrypt_file(plain, io.BytesIO(), [])


@pytest.mark.skipif(shutil.which("age") is None, reason="the age binary is not installed")
def test_age_binary_decrypts_what_encrypt_file_wrote(
    key: Path, plain: Path, tmp_path: Path
) -> None:
    encrypted = tmp_path / "plain.bin.age"
    encrypted.write_bytes(_encrypt(plain, key))
    out = tmp_path / "out.bin"
    subprocess.run(["age", "-d", "-i", str(key), "-o", str(out), str(encrypted)], check=True)
    assert out.read_bytes() == plain.read_bytes()


# -- recipients -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "garbage", "age1notbech32", "ssh-ed25519 AAAA", "age1" + "q" * 80]
)
def test_parse_recipient_rejects_garbage(text: str) -> None:
    with pytest.raises(UsageError, match="give an age public key starting with age1") as caught:
        parse_recipient(text)
    assert caught.value.exit_code == ExitCode.USAGE
    assert "\n" not in str(caught.value)
    assert len(str(caught.value)) < 160


def test_parse_recipient_never_echoes_a_secret_key(key: Path) -> None:
    with pytest.raises(UsageError) as caught:
        parse_recipient(_secret_of(key))
    assert SECRET not in str(caught.value)


def test_parse_recipient_accepts_a_public_key_with_whitespace(key: Path) -> None:
    text = public_key(load_identity(key))
    assert str(parse_recipient(f"  {text}\n")) == text


# -- identity files -------------------------------------------------------------------


def test_generate_identity_writes_an_age_keygen_file_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "key.txt"
    recipient = generate_identity(path)
    assert recipient.startswith("age1")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# created: ")
    assert lines[1] == f"# public key: {recipient}"
    assert lines[2].startswith(SECRET)
    assert len(lines) == 3
    loaded: Identity = load_identity(path)
    assert public_key(loaded) == recipient


def test_generate_identity_refuses_to_overwrite(key: Path) -> None:
    before = key.read_bytes()
    with pytest.raises(UsageError, match="already exists") as caught:
        generate_identity(key)
    assert key.read_bytes() == before
    assert SECRET not in str(caught.value)


def test_group_or_world_accessible_identity_is_refused(key: Path) -> None:
    for mode in (0o644, 0o640, 0o604, 0o660):
        key.chmod(mode)
        with pytest.raises(UsageError, match=f"chmod 600 {key}") as caught:
            load_identity(key)
        assert caught.value.exit_code == ExitCode.USAGE
        assert SECRET not in str(caught.value)
    key.chmod(0o600)
    assert public_key(load_identity(key)).startswith("age1")
    key.chmod(0o400)
    assert public_key(load_identity(key)).startswith("age1")


def test_missing_identity_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.txt"
    with pytest.raises(PathNotFoundError, match=str(path)):
        load_identity(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a mode 000 file")
def test_unreadable_identity_file(key: Path) -> None:
    key.chmod(0o000)
    with pytest.raises(UsageError, match=str(key)):
        load_identity(key)


def test_identity_file_with_no_key(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("# just a comment\n\n")
    path.chmod(0o600)
    with pytest.raises(UsageError, match="holds no AGE-SECRET-KEY-1 key"):
        load_identity(path)


@pytest.mark.parametrize(
    "body",
    [
        "{secret}X\n",  # malformed bech32
        "AGE-SECRET-KEY-1QQQQ\n",
        "{public}\n",  # a public key where the secret belongs
        "{secret}\n{secret}\n",  # more than one key
        "\xff\n",
    ],
)
def test_malformed_identity_file_never_shows_the_secret(
    key: Path, tmp_path: Path, body: str
) -> None:
    secret = _secret_of(key)
    text = body.format(secret=secret, public=public_key(load_identity(key)))
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="latin-1")
    path.chmod(0o600)
    with pytest.raises(UsageError, match=str(path)) as caught:
        load_identity(path)
    message = str(caught.value)
    assert secret not in message
    assert secret.lower() not in message.lower()
    assert "\n" not in message


def test_comments_and_blank_lines_are_allowed(key: Path, tmp_path: Path) -> None:
    path = tmp_path / "commented.txt"
    path.write_text(f"\n# a comment\n   \n{_secret_of(key)}\n# trailing\n")
    path.chmod(0o600)
    assert public_key(load_identity(path)) == public_key(load_identity(key))


def test_symlinked_identity_is_checked_at_its_target(key: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.txt"
    link.symlink_to(key)
    assert public_key(load_identity(link)) == public_key(load_identity(key))
    key.chmod(0o644)
    with pytest.raises(UsageError, match=f"chmod 600 {link}"):
        load_identity(link)


def test_a_fifo_as_identity_file_is_refused_at_once(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: a planted one must not make
    verify or restore wait forever (issue 12: every file custode reads is hostile input)."""
    fifo = tmp_path / "identity.txt"
    os.mkfifo(fifo, 0o600)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_identity(fifo)
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # unblock the old code's open() so the test run can end
        with open(fifo, "wb"):
            pass
        worker.join(5)
        pytest.fail("load_identity waited on a FIFO")
    assert len(errors) == 1 and isinstance(errors[0], UsageError)
    assert "is not a regular file" in str(errors[0])
