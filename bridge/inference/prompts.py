"""Prompt rendering (Jinja2): the constitution, the policy, the question, the input fenced as data."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
import msgspec

from bridge.inference.wire import InferRequest
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH

if TYPE_CHECKING:  # the groq SDK is a heavy import, and the gateway and control plane never call it
    from groq.types.chat import ChatCompletionMessageParam

TEMPLATE_DIR = Path(__file__).with_name("templates")
TEMPLATE_VERSION = "1"
"""Part of every cache key: bump it when a template changes what the model is asked."""

CONSTITUTIONAL_PROMPT = (
    "Decide conservatively: prefer review over allow when evidence is thin, deny clear harm, "
    "protect personal data, and keep every decision explainable."
)

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=False, undefined=jinja2.StrictUndefined,
    keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True,
)
_system = _env.get_template("system.j2")
_user = _env.get_template("user.j2")
_canonical = msgspec.json.Encoder(order="sorted")


def canonical_context(context: object) -> bytes:
    return _canonical.encode(context)


def render(req: InferRequest, *, policy_context: str = "",
           constitutional_prompt: str = CONSTITUTIONAL_PROMPT) -> list[ChatCompletionMessageParam]:
    """The chat messages for one request. The fence's boundary is derived from the input itself,
    so the input cannot contain its own closing tag."""
    context_json = canonical_context(req.context).decode()
    boundary = hashlib.sha256(context_json.encode()).hexdigest()[:16]
    system = _system.render(constitutional_hash=CONSTITUTIONAL_HASH, constitutional_prompt=constitutional_prompt,
                            policy=req.policy, policy_context=policy_context)
    user = _user.render(question=req.question, context_json=context_json, boundary=boundary)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
