"""Decoding of agent uploads: gzip (decision logs always, status optionally) and JSON, with limits."""

from __future__ import annotations

import zlib
from typing import Any

from litestar import Request

from bridge.kernel.errors import BadRequest, GroqPolicyError


class BadUpload(BadRequest):
    """An agent's upload that cannot be decoded or is not the shape OPA sends."""


class UploadTooLarge(GroqPolicyError):
    """An agent's upload over the body limit (counted after decompression)."""

    status = 413


async def read_body(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The body as sent, refused (413, the limit named) as soon as it passes `limit` bytes: a 40 MB
    report is never held whole. The routes lift Litestar's own cap so this one, configured, applies."""
    announced = request.content_length
    if announced is not None and announced > limit:
        raise UploadTooLarge(f"body: {announced} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(f"body: more than {limit} bytes exceeds the limit of {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo `Content-Encoding: gzip` without ever holding more than `limit` bytes (gzip bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise UploadTooLarge(f"body: {len(body)} bytes exceeds the limit of {limit}")
        return body
    if encoding != "gzip":
        raise BadUpload(f"Content-Encoding: unsupported {encoding!r} (expected gzip or identity)")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadUpload(f"body: invalid gzip data ({exc})") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise UploadTooLarge(f"body: decompressed size exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise BadUpload("body: truncated gzip data")
    return out
