"""rtkit.tls: a local CA, and wss:// on loopback with its certificates.

Servers listen on 127.0.0.1 or ::1 and a free port. The browser test drives
Debian's /usr/bin/chromium and skips when it is missing.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import shutil
import socket
import ssl
import stat
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from playwright.sync_api import Error as PlaywrightError
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

import rtkit
from rtkit import tls
from rtkit.tls import LocalCA

from .browsers import launched_chromium
from .conftest import ThreadedServer, run, timeout


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    """A local CA shared by the tests that only read its files."""
    return LocalCA.create(tmp_path_factory.mktemp("tls"))


async def echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(message)


async def echo_over_wss(
    ca: LocalCA, url_host: str, *, bind: str = "127.0.0.1", **client_options: object
) -> str:
    """Serve an echo on ``bind`` over TLS, connect to ``url_host`` and return the echo.

    ``client_options`` go to websockets' ``connect``, e.g. ``ssl`` or
    ``server_hostname``. Without ``ssl`` the client uses the system's CAs.
    """
    async with serve(echo, bind, 0, ssl=ca.server_context()) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"wss://{url_host}:{port}/"
        async with connect(url, open_timeout=timeout(2), **client_options) as client:
            await client.send("over TLS")
            return await asyncio.wait_for(client.recv(), timeout(2))


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# Creating and reusing files


def test_create_writes_three_files(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "tls"

    ca = LocalCA.create(directory)

    assert ca.directory == directory
    assert ca.ca_file == directory / "ca.pem"
    assert ca.cert_file == directory / "server.pem"
    assert ca.key_file == directory / "server-key.pem"
    assert sorted(path.name for path in directory.iterdir()) == [
        "ca.pem",
        "server-key.pem",
        "server.pem",
    ]
    assert stat.S_IMODE(ca.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_create_replaces_key_with_mode_0600(tmp_path: Path) -> None:
    key_file = tmp_path / "server-key.pem"
    key_file.write_text("not a key")
    key_file.chmod(0o644)

    ca = LocalCA.create(tmp_path)

    assert stat.S_IMODE(ca.key_file.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in ca.key_file.read_bytes()


def test_create_names_loopback_only(ca: LocalCA) -> None:
    certificate = x509.load_pem_x509_certificate(ca.cert_file.read_bytes())
    names = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value

    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
    ]
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime <= datetime.timedelta(days=tls.DEFAULT_VALIDITY_DAYS, minutes=10)
    assert ca.not_valid_after() == certificate.not_valid_after_utc


def test_create_reuses_valid_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rtkit.tls")
    first = LocalCA.create(tmp_path)
    contents = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    second = LocalCA.create(tmp_path)

    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == contents
    assert second.spki_sha256() == first.spki_sha256()
    assert caplog.messages[-1].startswith(f"reusing the local CA in {tmp_path}")


def replace_key(directory: Path) -> None:
    other = LocalCA.create(directory / "other")
    shutil.copy(other.key_file, directory / "server-key.pem")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: (d / "ca.pem").unlink(), "ca.pem not found"),
        (lambda d: (d / "server.pem").write_text("junk"), "cannot be read"),
        (replace_key, "server-key.pem is not the key of server.pem"),
        (
            lambda d: shutil.copy(LocalCA.create(d / "other").ca_file, d / "ca.pem"),
            "server.pem is not signed by ca.pem",
        ),
    ],
    ids=["missing", "unreadable", "other-key", "other-ca"],
)
def test_create_replaces_invalid_files(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], object],
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="rtkit.tls")
    first = LocalCA.create(tmp_path)
    spki = first.spki_sha256()
    damage(tmp_path)

    second = LocalCA.create(tmp_path)

    assert second.spki_sha256() != spki
    creating = [m for m in caplog.messages if m.startswith("creating a local CA")]
    assert creating[-1].startswith(f"creating a local CA in {tmp_path}: ")
    assert reason in creating[-1]
    second.server_context()


def test_create_replaces_expiring_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rtkit.tls")
    spki = LocalCA.create(tmp_path, days=2).spki_sha256()
    monkeypatch.setattr(tls, "RENEW_BEFORE", datetime.timedelta(days=3))

    renewed = LocalCA.create(tmp_path, days=2)

    assert renewed.spki_sha256() != spki
    assert "expires at" in caplog.messages[-2]


@pytest.mark.parametrize("days", [0, 1, 398, 2.5, True])
def test_create_rejects_invalid_days(tmp_path: Path, days: object) -> None:
    with pytest.raises(ValueError, match=r"invalid days: .*from 2 to 397"):
        LocalCA.create(tmp_path, days=days)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_contexts_need_files(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path)

    with pytest.raises(FileNotFoundError, match=r"missing ca\.pem, server\.pem"):
        ca.server_context()
    with pytest.raises(FileNotFoundError, match=r"python -m rtkit cert --dir"):
        ca.client_context()


def test_spki_sha256_matches_openssl(ca: LocalCA) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    public_key = subprocess.run(
        [openssl, "x509", "-in", ca.cert_file, "-pubkey", "-noout"],
        check=True,
        capture_output=True,
        timeout=timeout(2),
    ).stdout
    der = subprocess.run(
        [openssl, "pkey", "-pubin", "-outform", "DER"],
        input=public_key,
        check=True,
        capture_output=True,
        timeout=timeout(2),
    ).stdout
    digest = subprocess.run(
        [openssl, "dgst", "-sha256", "-binary"],
        input=der,
        check=True,
        capture_output=True,
        timeout=timeout(2),
    ).stdout

    assert ca.spki_sha256() == base64.b64encode(digest).decode()


# Connecting over wss://


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_client_context_connects(ca: LocalCA, host: str) -> None:
    reply = run(echo_over_wss(ca, host, ssl=ca.client_context()))

    assert reply == "over TLS"


def test_client_context_connects_over_ipv6(ca: LocalCA) -> None:
    if not has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback address")

    reply = run(echo_over_wss(ca, "[::1]", bind="::1", ssl=ca.client_context()))

    assert reply == "over TLS"


def test_default_context_rejects_local_ca(ca: LocalCA) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as error:
        run(echo_over_wss(ca, "127.0.0.1"))

    assert error.value.verify_message == "unable to get local issuer certificate"
    assert "certificate verify failed" in str(error.value)


def test_client_context_rejects_wrong_hostname(ca: LocalCA) -> None:
    # Only the name checked against the certificate changes. The connection
    # still goes to 127.0.0.1.
    with pytest.raises(ssl.SSLCertVerificationError) as error:
        run(
            echo_over_wss(
                ca,
                "127.0.0.1",
                ssl=ca.client_context(),
                server_hostname="rtkit.invalid",
            )
        )

    assert "Hostname mismatch" in error.value.verify_message
    assert "'rtkit.invalid'" in error.value.verify_message


def test_client_context_rejects_other_ca(ca: LocalCA, tmp_path: Path) -> None:
    other = LocalCA.create(tmp_path)

    with pytest.raises(ssl.SSLCertVerificationError) as error:
        run(echo_over_wss(ca, "127.0.0.1", ssl=other.client_context()))

    assert error.value.verify_message == "unable to get local issuer certificate"


def test_name_constraints_reject_other_host(tmp_path: Path) -> None:
    # A certificate for another host, signed with a key like the CA's (which
    # LocalCA never stores), must fail because of the CA's name constraints.
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_certificate = tls._ca_certificate(ca_key, now - tls.CLOCK_SKEW, not_after)
    key = ec.generate_private_key(ec.SECP256R1())
    other_host = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rtkit.invalid")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(other_host)
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - tls.CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("rtkit.invalid")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = tls.serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca_certificate.public_bytes(pem))
    (tmp_path / "server.pem").write_bytes(certificate.public_bytes(pem))
    (tmp_path / "server-key.pem").write_bytes(tls._private_pem(key))
    forged = LocalCA(tmp_path)

    with pytest.raises(ssl.SSLCertVerificationError) as error:
        run(
            echo_over_wss(
                forged,
                "127.0.0.1",
                ssl=forged.client_context(),
                server_hostname="rtkit.invalid",
            )
        )

    assert error.value.verify_message == "permitted subtree violation"


# rtkit.Server over TLS


def test_rtkit_server_serves_wss(ca: LocalCA) -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, ssl=ca.server_context()) as server:
            assert server.url == f"https://127.0.0.1:{server.port}/"
            assert server.ws_url == f"wss://127.0.0.1:{server.port}/ws"
            async with connect(
                server.ws_url, ssl=ca.client_context(), open_timeout=timeout(2)
            ) as client:
                greeting = await asyncio.wait_for(client.recv(), timeout(2))
            health = await asyncio.to_thread(
                urllib.request.urlopen,
                server.url + "health",
                context=ca.client_context(),
                timeout=timeout(2),
            )
            with health:
                assert health.status == 200

        assert greeting == rtkit.WELCOME

    run(scenario())


# Chromium


def chromium_page_result(
    server: rtkit.Server, extra_args: list[str]
) -> tuple[str, object]:
    """Open the server's /health in Chromium, then a WebSocket to its ws_url.

    Returns the navigation error (empty when the page loaded) and the first
    WebSocket message or the close event's code.
    """
    with launched_chromium(extra_args) as browser:
        page = browser.new_page()
        page.set_default_timeout(timeout(5) * 1000)
        try:
            page.goto(server.url + "health")
        except PlaywrightError as exc:
            return str(exc), None
        first = page.evaluate(
            """(url) => new Promise((resolve) => {
                const socket = new WebSocket(url);
                socket.onmessage = (event) => {
                    resolve(event.data);
                    socket.close();
                };
                socket.onclose = (event) => resolve(event.code);
            })""",
            server.ws_url,
        )
        return "", first


@pytest.mark.browser
def test_chromium_accepts_pinned_key(ca: LocalCA) -> None:
    pin = f"--ignore-certificate-errors-spki-list={ca.spki_sha256()}"

    with ThreadedServer(ssl=ca.server_context()) as server:
        error, first = chromium_page_result(server, [pin])

    assert error == ""
    assert first == rtkit.WELCOME


@pytest.mark.browser
def test_chromium_rejects_unpinned_key(ca: LocalCA) -> None:
    with ThreadedServer(ssl=ca.server_context()) as server:
        with launched_chromium() as browser:
            page = browser.new_page()
            with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
                page.goto(server.url + "health", timeout=timeout(5) * 1000)
