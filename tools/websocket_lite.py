"""A minimal RFC 6455 websocket client (stdlib only) for ComfyUI's ``/ws`` event stream.

The host tests run in the pack's own venv, which has no websocket library; ComfyUI only ever sends small text
frames (JSON events) and binary frames (preview images) to a client, so reading frames is all that is needed.
Client frames (pong, close) are masked as the RFC requires.
"""

import base64
import hashlib
import json
import os
import socket
import struct

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONTINUATION, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketClosed(ConnectionError):
    pass


class WebSocket:
    """``WebSocket(host, port, path)``; ``recv_event(timeout)`` returns the next JSON event (dict) or None on timeout."""

    def __init__(self, host: str, port: int, path: str, connect_timeout: float = 10.0):
        self._sock = socket.create_connection((host, port), timeout=connect_timeout)
        self._buffer = b""
        self._parts: list[bytes] = []
        self._message_opcode = _OP_TEXT
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self._sock.sendall(request.encode())
        header = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line = header.split("\r\n", 1)[0]
        if " 101 " not in status_line + " ":
            raise ConnectionError(f"websocket upgrade to ws://{host}:{port}{path} refused: {status_line!r}")
        expected = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        if expected not in header:
            raise ConnectionError("websocket handshake: Sec-WebSocket-Accept does not match the key sent")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(marker, 1)
        return head

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise WebSocketClosed("server closed the websocket connection")
        self._buffer += chunk

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(header + mask + masked)

    def _parse_frame(self) -> tuple[bool, int, bytes] | None:
        """One whole frame taken off the buffer, or None while it is incomplete (nothing is consumed then,
        so a timeout between reads never loses half a frame)."""
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        length, offset = second & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,), offset = struct.unpack("!H", buf[2:4]), 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,), offset = struct.unpack("!Q", buf[2:10]), 10
        mask = None
        if second & 0x80:
            if len(buf) < offset + 4:
                return None
            mask, offset = buf[offset:offset + 4], offset + 4
        if len(buf) < offset + length:
            return None
        payload = buf[offset:offset + length]
        self._buffer = buf[offset + length:]
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bool(first & 0x80), first & 0x0F, payload

    def recv_message(self, timeout: float) -> tuple[int, bytes] | None:
        """Next complete data message as (opcode, payload), or None if none completes within ``timeout`` s."""
        self._sock.settimeout(timeout)
        try:
            while True:
                frame = self._parse_frame()
                if frame is None:
                    self._fill()
                    continue
                fin, opcode, payload = frame
                if opcode == _OP_PING:
                    self._send_frame(_OP_PONG, payload)
                elif opcode == _OP_PONG:
                    pass
                elif opcode == _OP_CLOSE:
                    raise WebSocketClosed("server sent a websocket close frame")
                else:
                    if opcode != _OP_CONTINUATION:
                        self._message_opcode, self._parts = opcode, []
                    self._parts.append(payload)
                    if fin:
                        return self._message_opcode, b"".join(self._parts)
        except socket.timeout:
            return None

    def recv_event(self, timeout: float) -> dict | None:
        """Next JSON event ``{"type": ..., "data": ...}``; binary frames (previews) are skipped."""
        while True:
            message = self.recv_message(timeout)
            if message is None:
                return None
            opcode, payload = message
            if opcode == _OP_TEXT:
                return json.loads(payload.decode("utf-8"))

    def close(self) -> None:
        try:
            self._send_frame(_OP_CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        self._sock.close()
