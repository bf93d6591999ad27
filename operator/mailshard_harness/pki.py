"""Certificates and keys for a real, TLS-secured, RBAC-enforcing control plane.

The apiserver serves real TLS, every component authenticates with its own
client certificate (so RBAC applies to the controller-manager and scheduler as
it does in a real cluster), and service accounts get signed tokens. A fresh CA
per cluster instance keeps two instances on one machine apart.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate's user (CN) and groups (O) as the apiserver sees them."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


CLIENT_IDENTITIES = (
    ClientIdentity("admin", "mailshard-harness-admin", ("system:masters",)),
    ClientIdentity("controller-manager", "system:kube-controller-manager"),
    ClientIdentity("scheduler", "system:kube-scheduler"),
    ClientIdentity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("kubeadm:cluster-admins",)),
)
KUBE_PROXY_IDENTITY = ClientIdentity("kube-proxy", "system:kube-proxy")
"""kube-proxy of the real-node tier; the bootstrap RBAC policy binds system:node-proxier to this user."""


def node_identity(node_name: str) -> ClientIdentity:
    """A kubelet's identity: the Node authorizer only lets `system:node:<name>` in `system:nodes` act for its node."""
    return ClientIdentity(f"node-{node_name}", f"system:node:{node_name}", ("system:nodes",))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _issue(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey,
    is_ca: bool = False,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject if ca_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names or server_ips:
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
        alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


@dataclass(frozen=True)
class ClusterPKI:
    """Paths of every file the control plane needs."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def apiserver_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.directory / "sa.pub"

    def client_cert(self, stem: str) -> Path:
        return self.directory / f"{stem}.crt"

    def client_key(self, stem: str) -> Path:
        return self.directory / f"{stem}.key"


def create_pki(
    directory: Path,
    *,
    server_ips: tuple[str, ...] = ("127.0.0.1",),
    extra_identities: tuple[ClientIdentity, ...] = (),
) -> ClusterPKI:
    """A CA, the apiserver's serving cert, a client cert per component (and per extra identity), the SA key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = ClusterPKI(directory)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(subject=_name("mailshard-harness-ca"), key=ca_key, ca_cert=None, ca_key=ca_key, is_ca=True)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_cert, ca_cert)

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        subject=_name("kube-apiserver"),
        key=server_key,
        ca_cert=ca_cert,
        ca_key=ca_key,
        server_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        server_ips=(*server_ips, "10.96.0.1"),
    )
    _write_key(pki.apiserver_key, server_key)
    _write_cert(pki.apiserver_cert, server_cert)

    for identity in (*CLIENT_IDENTITIES, *extra_identities):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(
            subject=_name(identity.user, identity.groups), key=key, ca_cert=ca_cert, ca_key=ca_key, client=True
        )
        _write_key(pki.client_key(identity.file_stem), key)
        _write_cert(pki.client_cert(identity.file_stem), cert)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.service_account_key, sa_key)
    pki.service_account_pub.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki
