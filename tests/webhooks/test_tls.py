"""An https attempt connects to the checked address but speaks TLS for the name: the server
sees the name as SNI, and the certificate is checked against the name, not the address."""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from berth.store.webhooks import Delivery
from berth.webhooks.sender import send
from berth.webhooks.signing import Signer
from tests.e2e.webhook_receiver import SECRET


def _self_signed(name: str, directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (the handler's name)
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_receiver(tmp_path: Path) -> Iterator[tuple[int, list[str | None], Path]]:
    """An https server on 127.0.0.1 with a certificate for "localhost" only (no address in
    it); yields its port, the server names clients asked for, and the certificate."""
    cert, key = _self_signed("localhost", tmp_path)
    names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], names, cert
    finally:
        server.shutdown()
        server.server_close()


def _client(trusted: Path) -> httpx.AsyncClient:
    # as new_client's, trusting the test's certificate
    return httpx.AsyncClient(
        verify=ssl.create_default_context(cafile=str(trusted)),
        trust_env=False,
        follow_redirects=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


async def test_tls_is_for_the_name_though_the_address_is_pinned(
    https_receiver: tuple[int, list[str | None], Path],
) -> None:
    port, names, cert = https_receiver
    url = f"https://localhost:{port}/hook"
    delivery = Delivery(id="evt_1", type="job.completed", created_at=1, object="job_1", url=url)
    signer = Signer(SECRET)
    async with _client(cert) as client:
        sent = await send(client, delivery, b"{}", signer, allow_private=True, timeout_s=10)
    # the connection went to 127.0.0.1, and the certificate, which names only "localhost",
    # was checked against the name
    assert sent.delivered, sent.reason
    assert names == ["localhost"]
    # the same server reached by its address fails the check: the check is real
    by_address = Delivery(**{**delivery.__dict__, "url": f"https://127.0.0.1:{port}/hook"})
    async with _client(cert) as client:
        wrong = await send(client, by_address, b"{}", signer, allow_private=True, timeout_s=10)
    assert not wrong.delivered and not wrong.refused
    assert "CERTIFICATE_VERIFY_FAILED" in wrong.reason
