"""TLS for a local rtkit server: a private certificate authority for loopback.

A ``wss://`` client verifies the server's certificate against the certificate
authorities (CAs) it trusts, and checks that the certificate names the host it
connected to. No public CA issues certificates for ``localhost``, so
:class:`LocalCA` creates a private CA and one server certificate signed by it
for the names a local server is reached by: ``localhost``, ``127.0.0.1`` and
``::1``. Usage, in a notebook cell::

    ca = LocalCA.create("tls")
    server = await rtkit.start(ssl=ca.server_context())   # https://127.0.0.1:8765/
    async with websockets.connect(server.ws_url, ssl=ca.client_context()) as ws:
        ...

The directory then contains three files:

* ``ca.pem``: the CA certificate, which clients trust (``--cafile`` for curl,
  ``ssl=ca.client_context()`` in Python);
* ``server.pem``: the server certificate;
* ``server-key.pem``: the server's private key, readable by its owner only.

The CA's private key signs the server certificate once and is never written,
so these files cannot sign another certificate. The CA certificate
also carries name constraints (RFC 5280) that limit it to the loopback names
above: a client that enforces them, as OpenSSL does, rejects any certificate
from this CA for another host. Both certificates expire after a week by
default, and :meth:`LocalCA.create` replaces them a day before they expire.

Browsers do not trust this CA. Rather than adding it to the system's trust
store, start Chromium with
``--ignore-certificate-errors-spki-list=<LocalCA.spki_sha256()>``: it then
accepts this one server key and still rejects every other invalid certificate.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_FILE",
    "CERT_FILE",
    "DEFAULT_DIRECTORY",
    "DEFAULT_VALIDITY_DAYS",
    "KEY_FILE",
    "SERVER_NAMES",
    "LocalCA",
]

logger = logging.getLogger("rtkit.tls")

CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server-key.pem"

DEFAULT_DIRECTORY = Path("~/.rtkit/tls")
"""The folder :meth:`LocalCA.create` writes to when given no directory."""

DEFAULT_VALIDITY_DAYS = 7
"""How long new certificates are valid. Short, because a leaked server key is
only useful until its certificate expires."""

RENEW_BEFORE = datetime.timedelta(days=1)
"""Existing certificates that expire sooner than this are replaced."""

CLOCK_SKEW = datetime.timedelta(minutes=5)
"""How far back ``notBefore`` is set, for clients whose clock runs behind."""

SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
"""The names in the server certificate: a DNS name and two IP addresses."""

_PERMITTED_SUBTREES: list[x509.GeneralName] = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
    x509.IPAddress(ipaddress.ip_network("::1/128")),
]
"""The names the CA may vouch for (RFC 5280 name constraints)."""


class LocalCA:
    """A private CA and one server certificate for loopback, stored in a directory.

    Create the files with :meth:`create`. The constructor only records where
    they are, so it also opens a directory that ``python -m rtkit cert`` or
    another process filled.

    Args:
        directory: the folder that contains ``ca.pem``, ``server.pem`` and
            ``server-key.pem``.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()

    @property
    def ca_file(self) -> Path:
        """The CA certificate that clients trust, in PEM."""
        return self.directory / CA_FILE

    @property
    def cert_file(self) -> Path:
        """The server certificate, in PEM."""
        return self.directory / CERT_FILE

    @property
    def key_file(self) -> Path:
        """The server's private key, in PEM (PKCS #8, unencrypted)."""
        return self.directory / KEY_FILE

    def __repr__(self) -> str:
        return f"<rtkit.tls.LocalCA {str(self.directory)!r}>"

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str] | None = None,
        *,
        days: int = DEFAULT_VALIDITY_DAYS,
    ) -> LocalCA:
        """Write a CA and a server certificate to ``directory``, or reuse them.

        Existing files are kept when they form a valid set: the server
        certificate is signed by the CA, names ``localhost``, ``127.0.0.1`` and
        ``::1``, matches the key, and stays valid for more than a day.
        Otherwise all three files are replaced, and a log line gives the reason.

        Args:
            directory: the folder for the files, created (mode 0700) if
                missing. ``None`` means :data:`DEFAULT_DIRECTORY`,
                ``~/.rtkit/tls``.
            days: how long new certificates are valid, from 2 to 397 days.
                397 is the maximum that browsers accept for a server
                certificate.

        Returns:
            The :class:`LocalCA` of ``directory``.

        Raises:
            ValueError: if ``days`` is out of range.
            OSError: if the directory or a file cannot be written.
        """
        if isinstance(days, bool) or not isinstance(days, int) or not 2 <= days <= 397:
            raise ValueError(
                f"invalid days: {days!r}; pass how long the certificates are "
                f"valid, an integer from 2 to 397 (default {DEFAULT_VALIDITY_DAYS})"
            )
        ca = cls(DEFAULT_DIRECTORY if directory is None else directory)
        problem = ca._reuse_problem()
        if problem is None:
            logger.info(
                "reusing the local CA in %s; its server certificate is valid until %s",
                ca.directory,
                ca.not_valid_after().isoformat(timespec="seconds"),
            )
            return ca
        logger.info("creating a local CA in %s: %s", ca.directory, problem)
        ca._write(days)
        return ca

    def not_valid_after(self) -> datetime.datetime:
        """Return when the server certificate expires, in UTC.

        Raises:
            OSError: if ``server.pem`` cannot be read.
            ValueError: if it is not a PEM certificate.
        """
        return _load_certificate(self.cert_file).not_valid_after_utc

    def server_context(self) -> ssl.SSLContext:
        """Return a TLS context for the server, with its certificate and key.

        Pass it as ``rtkit.Server(ssl=...)`` or to websockets' ``serve(ssl=...)``.

        Raises:
            OSError: if the files are missing; call :meth:`create` first.
            ssl.SSLError: if the certificate and the key do not match.
        """
        self._require_files()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Return a TLS context for clients that trusts this CA and no other.

        The context verifies the server's certificate and its host name, as
        a default context does, but against ``ca.pem`` in place of the
        system's CAs. Pass it as websockets' ``connect(ssl=...)``.

        Raises:
            OSError: if ``ca.pem`` is missing; call :meth:`create` first.
        """
        self._require_files()
        context = ssl.create_default_context(cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def spki_sha256(self) -> str:
        """Return the base64 SHA-256 hash of the server's public key (its SPKI).

        This is the value Chromium's ``--ignore-certificate-errors-spki-list``
        takes, so that Chromium accepts this server's certificate without
        trusting the CA. A new server key (after :meth:`create` replaced
        the files) has a new hash.

        Raises:
            OSError: if ``server.pem`` cannot be read.
            ValueError: if it is not a PEM certificate.
        """
        certificate = _load_certificate(self.cert_file)
        spki = certificate.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")

    # Checking existing files

    def _require_files(self) -> None:
        missing = [
            path.name
            for path in (self.ca_file, self.cert_file, self.key_file)
            if not path.is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"missing {', '.join(missing)} in {self.directory}; create them "
                f"with rtkit.tls.LocalCA.create({str(self.directory)!r}) or "
                f"`python -m rtkit cert --dir {self.directory}`"
            )

    def _reuse_problem(self) -> str | None:
        """Return why the existing files cannot be reused, or ``None`` if they can."""
        missing = [
            path.name
            for path in (self.ca_file, self.cert_file, self.key_file)
            if not path.is_file()
        ]
        if missing:
            return f"{', '.join(missing)} not found"
        try:
            ca_certificate = _load_certificate(self.ca_file)
            certificate = _load_certificate(self.cert_file)
            key = serialization.load_pem_private_key(
                self.key_file.read_bytes(), password=None
            )
        except (OSError, ValueError, TypeError) as exc:
            return f"the existing files cannot be read ({exc})"
        now = datetime.datetime.now(datetime.UTC)
        for name, cert in ((CA_FILE, ca_certificate), (CERT_FILE, certificate)):
            if cert.not_valid_before_utc > now:
                return f"{name} is not valid yet"
            if cert.not_valid_after_utc - now < RENEW_BEFORE:
                expiry = cert.not_valid_after_utc.isoformat(timespec="seconds")
                return f"{name} expires at {expiry}, in less than a day"
        try:
            certificate.verify_directly_issued_by(ca_certificate)
        except (ValueError, TypeError, InvalidSignature):
            return f"{CERT_FILE} is not signed by {CA_FILE}"
        if key.public_key() != certificate.public_key():
            return f"{KEY_FILE} is not the key of {CERT_FILE}"
        if _subject_alternative_names(certificate) != set(SERVER_NAMES):
            return f"{CERT_FILE} does not name exactly {', '.join(SERVER_NAMES)}"
        return None

    # Writing new files

    def _write(self, days: int) -> None:
        now = datetime.datetime.now(datetime.UTC)
        not_before = now - CLOCK_SKEW
        not_after = now + datetime.timedelta(days=days)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_certificate = _ca_certificate(ca_key, not_before, not_after)
        server_key = ec.generate_private_key(ec.SECP256R1())
        certificate = _server_certificate(
            server_key, ca_key, ca_certificate, not_before, not_after
        )
        # ca_key goes out of scope here: nothing can sign with this CA again.

        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # NOTE: each file is replaced atomically, but not the three together,
        # so two processes creating a CA in one folder at the same moment may
        # leave a mixed set. The next create() detects it and replaces it.
        pem = serialization.Encoding.PEM
        _write_atomically(self.key_file, _private_pem(server_key), mode=0o600)
        _write_atomically(self.ca_file, ca_certificate.public_bytes(pem), mode=0o644)
        _write_atomically(self.cert_file, certificate.public_bytes(pem), mode=0o644)
        logger.info(
            "wrote %s, %s and %s to %s; valid until %s",
            CA_FILE,
            CERT_FILE,
            KEY_FILE,
            self.directory,
            not_after.isoformat(timespec="seconds"),
        )


def _load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _subject_alternative_names(certificate: x509.Certificate) -> set[str]:
    try:
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        return set()
    dns_names = names.get_values_for_type(x509.DNSName)
    addresses = names.get_values_for_type(x509.IPAddress)
    return set(dns_names) | {str(address) for address in addresses}


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """Return a self-signed CA certificate limited to the loopback names."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rtkit"),
            x509.NameAttribute(NameOID.COMMON_NAME, "rtkit local CA"),
        ]
    )
    public_key = key.public_key()
    key_usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=_PERMITTED_SUBTREES, excluded_subtrees=None
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """Return a server certificate for :data:`SERVER_NAMES`, signed by the CA."""
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_NAMES[1:]]
    key_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    ca_key_id = ca_certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    The temporary file is created with mode 0600 and changed to ``mode``
    before the rename, so a private key is never readable by others, not
    even for a moment.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        # NOTE: on Windows chmod only sets the read-only flag, so there the
        # key file's privacy depends on the folder's access rules.
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
