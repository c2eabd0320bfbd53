"""A small certificate authority for the agents' mutual TLS.

``haul ca init`` makes ``ca.key`` and ``ca.crt`` (EC P-256, ten years);
``haul ca issue HOST --ip ...`` makes ``HOST.key`` and ``HOST.crt`` signed by
it, naming the host (DNS) and its addresses (IP) as subject alternative
names, good both as a server certificate (the agent's listener) and as a
client certificate (one agent or the CLI calling another). Keys are written
mode 0600 and never replaced unless asked. A certificate lives a year
(:data:`CERT_DAYS`) and at most :data:`MAX_CERT_DAYS`: a stolen key is good for
that long at most, and until then only as long as no revocation names it.

``haul ca revoke NAME`` adds a certificate's serial to ``crl.pem``, the CA's
certificate revocation list, signed by the CA; agents given it (``[agent.tls]
crl``) refuse that certificate, and so does CRIU on the page channels. The list
names its next update at the CA's own end, so it never goes stale on its own:
a copy is good until a newer one replaces it (docs/security.md).

A certificate's common name is who its holder is to an agent: a peer (the name
of an ``[agent.peers]`` entry) or an operator (``[agent.auth] operators``); a
certificate of this CA whose name is neither may call nothing.

The addresses matter: whoever connects to a host checks that its certificate
names the address it connected to. Python's TLS does for the agents' API, and
CRIU (GnuTLS) does for pages sent to a page server, so an agent's certificate
must name the address other hosts reach it at (its ``advertise_address``; the
agent refuses to start otherwise). A HOST that is itself an IP address is
named as one.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from haul.agent.config import HOST_NAME_RE
from haul.errors import ConfigError, UsageError

DEFAULT_CA_DIR = Path("/etc/haul/ca")
CA_KEY = "ca.key"
CA_CERT = "ca.crt"
CA_CRL = "crl.pem"
CA_DAYS = 3650
#: how long a host's or an operator's certificate lives by default: a year
CERT_DAYS = 365
#: and at most (the public web's limit for server certificates)
MAX_CERT_DAYS = 397
#: certificates start a little in the past, for clocks that differ between hosts
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class KeyPair:
    key: Path
    cert: Path


def ca_files(directory: Path) -> KeyPair:
    return KeyPair(key=directory / CA_KEY, cert=directory / CA_CERT)


def host_files(directory: Path, host: str) -> KeyPair:
    check_host(host)
    return KeyPair(key=directory / f"{host}.key", cert=directory / f"{host}.crt")


def check_host(host: str) -> str:
    if not HOST_NAME_RE.fullmatch(host) or host.lower() == "ca":
        raise UsageError(
            f"{host!r} is not a host name for a certificate "
            "(letters, digits, '-' and '.'; not 'ca')"
        )
    return host


def _parse_ips(ips: Sequence[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = []
    for ip in ips:
        try:
            out.append(ipaddress.ip_address(ip))
        except ValueError:
            raise UsageError(f"{ip!r} is not an IP address") from None
    return out


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise UsageError(f"{path} exists; remove it (or pass --force) to replace it") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_existing(pair: KeyPair, overwrite: bool) -> None:
    if overwrite:
        return
    for path in (pair.key, pair.cert):
        if path.exists():
            raise UsageError(f"{path} exists; remove it (or pass --force) to replace it")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def init_ca(
    directory: Path = DEFAULT_CA_DIR,
    *,
    name: str = "haul CA",
    days: int = CA_DAYS,
    overwrite: bool = False,
) -> KeyPair:
    """Make a new CA in ``directory``: ca.key (0600) and ca.crt."""
    if days < 1:
        raise UsageError("a CA must be valid for at least a day")
    pair = ca_files(directory)
    _refuse_existing(pair, overwrite)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "haul"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write(pair.key, _key_pem(key), 0o600, overwrite)
    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite)
    return pair


def load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    pair = ca_files(directory)
    if pair.key.exists():
        from haul.agent.config import check_private

        check_private(str(directory), "the CA's key", pair.key)
    try:
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no CA in {directory} ({exc.filename} is missing): run 'haul ca init' first"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the CA in {directory}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{pair.key} is not an EC key")
    return key, cert


def issue(
    directory: Path,
    host: str,
    ips: Sequence[str] = (),
    *,
    days: int = CERT_DAYS,
    overwrite: bool = False,
) -> KeyPair:
    """Issue HOST.key (0600) and HOST.crt in ``directory``, signed by its CA."""
    pair = host_files(directory, host)
    addresses = _parse_ips(ips)
    if days < 1:
        raise UsageError("a certificate must be valid for at least a day")
    if days > MAX_CERT_DAYS:
        raise UsageError(
            f"a certificate lives at most {MAX_CERT_DAYS} days, not {days}; "
            "issue a new one before it ends (haul ca issue ... --force)"
        )
    ca_key, ca_cert = load_ca(directory)
    _refuse_existing(pair, overwrite)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    names: list[x509.GeneralName] = [x509.DNSName(host)]
    with contextlib.suppress(ValueError):
        as_ip = ipaddress.ip_address(host)
        if as_ip not in addresses:
            addresses.insert(0, as_ip)
    names += [x509.IPAddress(a) for a in addresses]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "haul"),
                    x509.NameAttribute(NameOID.COMMON_NAME, host),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(pair.key, _key_pem(key), 0o600, overwrite)
    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite)
    return pair


def _crl_builder(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    serials: frozenset[int],
    number: int,
) -> x509.CertificateRevocationList:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        # good until a newer list replaces it: one that went stale on its own would
        # make every handshake fail (OpenSSL and GnuTLS refuse an expired list)
        .next_update(max(ca_cert.not_valid_after_utc, now + datetime.timedelta(days=1)))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for serial in sorted(serials):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - BACKDATE)
            .build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def _load_crl(crl: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    try:
        loaded = x509.load_pem_x509_crl(crl.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{crl} is not a PEM certificate revocation list: {exc}") from exc
    public = ca_cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not loaded.is_signature_valid(public):
        raise ConfigError(f"{crl} is not signed by the CA of {ca_cert.subject.rfc4514_string()}")
    return loaded


def crl_serials(crl: Path, ca: Path) -> frozenset[int]:
    """The serials the revocation list ``crl`` names, once its signature is checked
    against the CA certificate ``ca`` (ConfigError in one line otherwise)."""
    try:
        ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{ca} is not a PEM certificate: {exc}") from exc
    return frozenset(r.serial_number for r in _load_crl(crl, ca_cert))


def write_crl(directory: Path, add: frozenset[int] = frozenset()) -> Path:
    """(Re)write DIR/crl.pem: the serials it named, and ``add``, signed by the CA."""
    ca_key, ca_cert = load_ca(directory)
    path = directory / CA_CRL
    serials, number = frozenset[int](), 1
    if path.exists():
        old = _load_crl(path, ca_cert)
        serials = frozenset(r.serial_number for r in old)
        with contextlib.suppress(x509.ExtensionNotFound):
            number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    crl = _crl_builder(ca_key, ca_cert, serials | add, number)
    _write(path, crl.public_bytes(serialization.Encoding.PEM), 0o644, overwrite=True)
    return path


def revoke(directory: Path, name: str | None = None, *, serial: int | None = None) -> Path:
    """Revoke the certificate DIR/NAME.crt (or the one with ``serial``): its serial goes
    into DIR/crl.pem, which every agent must then be given (docs/security.md)."""
    if (name is None) == (serial is None):
        raise UsageError("revoke a certificate by its name or by its serial, one of them")
    if name is not None:
        path = host_files(directory, name).cert
        try:
            serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
        except FileNotFoundError:
            raise UsageError(f"no certificate {name} in {directory} ({path})") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not a PEM certificate: {exc}") from exc
    assert serial is not None
    return write_crl(directory, frozenset({serial}))


def server_ssl_context(ca: Path, cert: Path, key: Path, crl: Path | None = None) -> ssl.SSLContext:
    """For the agent's TCP listener: present ``cert``, require a client certificate from
    ``ca`` that ``crl`` (if given) does not name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, ca, cert, key, crl)
    return ctx


def client_ssl_context(
    ca: Path, cert: Path | None = None, key: Path | None = None, crl: Path | None = None
) -> ssl.SSLContext:
    """For calling an agent: trust only ``ca``, check the host name and (with ``crl``)
    that the agent's certificate is not revoked, present ``cert`` if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if (cert is None) != (key is None):
        raise UsageError("a client certificate needs both its cert and its key file")
    _load(ctx, ca, cert, key, crl)
    return ctx


def _load(
    ctx: ssl.SSLContext, ca: Path, cert: Path | None, key: Path | None, crl: Path | None = None
) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS: cannot load the CA certificate {ca}: {exc}") from exc
    if crl is not None:
        try:
            ctx.load_verify_locations(cafile=str(crl))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS: cannot load the revocation list {crl}: {exc}") from exc
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    if cert is not None and key is not None:
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"TLS: cannot load the certificate {cert} with key {key}: {exc}"
            ) from exc
