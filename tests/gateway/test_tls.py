"""TLS serving: a self-signed certificate made here; TLS 1.3 is served and older versions refused."""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.http import Request, Response, Router, StreamingResponse, serve


def make_cert(directory: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: with `cryptography` if installed, else the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither cryptography nor openssl is available to make a certificate")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        return str(cert), str(key)
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(cert), str(key)


def router() -> Router:
    async def hello(request: Request) -> Response:
        return Response(body=b'{"hello":"tls"}')

    async def events() -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"data: %d\n\n" % i

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(events())

    r = Router()
    r.add("GET", "/hello", hello)
    r.add("GET", "/stream", stream)
    return r


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_tls13_serving_and_older_versions_refused(tmp_path: Path, use_uvloop: bool) -> None:
    certfile, keyfile = make_cert(tmp_path)

    async def main() -> None:
        server = await serve(router(), "127.0.0.1", 0, certfile=certfile, keyfile=keyfile)
        try:
            client = ssl.create_default_context(cafile=certfile)  # verifies the chain and the IP
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client)
            assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
            writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: 15" in head
            assert await reader.readexactly(15) == b'{"hello":"tls"}'
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"transfer-encoding: chunked" in head
            body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
            assert b"data: 2" in body
            writer.close()

            old = ssl.create_default_context(cafile=certfile)
            old.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port, ssl=old), 5)
                w.close()

            plain_reader, plain_writer = await asyncio.open_connection("127.0.0.1", server.port)
            plain_writer.write(b"GET /hello HTTP/1.1\r\n\r\n")  # plain HTTP on the TLS port: no answer
            assert b"hello" not in await asyncio.wait_for(plain_reader.read(), 5)
            plain_writer.close()
        finally:
            await server.shutdown(1.0)

    if use_uvloop:
        pytest.importorskip("uvloop").run(main())
    else:
        asyncio.run(main())


def test_tls_needs_both_files(tmp_path: Path) -> None:
    certfile, _ = make_cert(tmp_path)
    with pytest.raises(ValueError, match="both"):
        asyncio.run(serve(router(), "127.0.0.1", 0, certfile=certfile))
