#!/usr/bin/env python3
"""grpc.health.v1 probe for container healthchecks: `sock-health ADDR [SERVICE]`.

ADDR is HOST:PORT, or unix:PATH for a server on a unix socket (sandboxd's
default; health stays open to any caller the socket lets in).

Exits 0 when the server answers SERVING, 1 otherwise, with one line on
stderr saying why. It speaks just enough HTTP/2 (prior knowledge, no TLS)
to make one unary call, so the image needs no grpcurl and no grpcio; the
`sock` CLI has no health subcommand yet.
"""
import socket
import struct
import sys

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits):
    # RFC 7541 5.1; every byte here has a zero high part (no Huffman, no index).
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = [limit], value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def hpack_literal(name, value):
    # "Literal Header Field without Indexing -- New Name": the encoder needs
    # no table, and every HTTP/2 server must accept it.
    name, value = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def varint(value):
    out = []
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + [value])


def protobuf_varint_field1(message):
    """The value of field 1 (varint) of a protobuf message, 0 when absent."""
    i, status = 0, 0
    while i < len(message):
        key, i = read_varint(message, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(message, i)
            if field == 1:
                status = value
        elif wire == 2:
            length, i = read_varint(message, i)
            i += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return status


def read_varint(data, i):
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf += chunk
    return buf


def connect(addr, timeout):
    """A socket to `unix:PATH` or `[http://]HOST:PORT`, and the :authority to send."""
    if addr.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(addr.removeprefix("unix:"))
        except OSError:
            sock.close()
            raise
        return sock, "localhost"
    host, _, port = addr.removeprefix("http://").rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout), f"{host}:{port}"


def check(addr, service, timeout):
    sock, authority = connect(addr, timeout)
    with sock:
        sock.settimeout(timeout)
        request = service.encode()
        message = (b"\x0a" + varint(len(request)) + request) if request else b""
        headers = b"".join(
            hpack_literal(k, v)
            for k, v in [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/grpc.health.v1.Health/Check"),
                (":authority", authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )
        sock.sendall(
            PREFACE
            + frame(SETTINGS, 0, 0)
            + frame(HEADERS, END_HEADERS, 1, headers)
            + frame(DATA, END_STREAM, 1, b"\x00" + struct.pack(">I", len(message)) + message)
        )
        body = b""
        while True:
            header = read_exact(sock, 9)
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            stream = struct.unpack(">I", header[5:9])[0] & 0x7FFFFFFF
            payload = read_exact(sock, length)
            if kind == SETTINGS and not flags & ACK:
                sock.sendall(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                sock.sendall(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                raise ConnectionError("the server closed the connection (GOAWAY)")
            elif kind == RST_STREAM and stream == 1:
                raise ConnectionError("the server reset the health call")
            elif kind == DATA and stream == 1:
                body += payload
            if kind in (DATA, HEADERS) and stream == 1 and flags & END_STREAM:
                break
    if len(body) < 5:
        # A trailers-only answer: grpc-status is an error (e.g. NOT_FOUND
        # for a service the server does not know).
        return None
    (length,) = struct.unpack(">I", body[1:5])
    return protobuf_varint_field1(body[5 : 5 + length])


def main(argv):
    if len(argv) not in (2, 3) or ":" not in argv[1]:
        print("usage: sock-health HOST:PORT|unix:PATH [SERVICE]", file=sys.stderr)
        return 2
    service = argv[2] if len(argv) == 3 else ""
    try:
        status = check(argv[1], service, timeout=3.0)
    except (OSError, ValueError, IndexError) as e:
        print(f"sock-health: {argv[1]}: {e}", file=sys.stderr)
        return 1
    if status == 1:
        return 0
    if status is None:
        print(f"sock-health: {argv[1]}: the health call for service '{service}' failed (unknown service?)", file=sys.stderr)
    else:
        print(f"sock-health: {argv[1]}: service '{service}' is {STATUS_NAMES.get(status, status)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
