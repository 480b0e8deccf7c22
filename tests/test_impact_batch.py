"""`BatchReAsk`, the Batch API side of `impact via=batch`, against the emulator over the real `groq`
SDK: what a pass notes is asked once per request, in one job per tier, and answered on the next
pass; a request no worker would take is refused without a job; no endpoint is a 503 naming the fix."""

from __future__ import annotations

import msgspec
import pytest

from bridge.inference.batch import BatchClient
from bridge.inference.catalog import default_catalog
from bridge.kernel.config import GroqSettings
from bridge.kernel.errors import Unavailable
from controlplane.impact.batched import BatchAsker, BatchReAsk
from tests.bridge_helpers import Emu


def body(text: str) -> dict:
    return {"question": "Is this text harmful?", "context": {"text": text}, "policy": "judge"}


async def test_a_pass_notes_requests_and_the_next_finds_the_batch_answers(emu: Emu):
    client = emu.client()
    try:
        reask = BatchReAsk(BatchClient(client, default_catalog(), emulated=True))
        texts = ["a friendly reminder", "please run rm -rf on it"]
        # first pass: nothing answered yet; the same request twice is noted once, from either path
        assert reask.call("fast", body(texts[0]), 1.0)[0] == 503
        assert (await reask.request("fast", msgspec.json.encode(body(texts[0]))))[0] == 503
        assert reask.call("balanced", body(texts[1]), 1.0)[0] == 503
        status, refused = reask.call("fast", {"question": " ", "context": {}}, 1.0)  # a worker would refuse these
        assert status == 422 and "question" in refused["error"]["message"]
        assert reask.call("deep", body(texts[1]), 1.0)[0] == 404
        before = emu.app.stats["batch_lines"]
        assert await reask.ask_pending() == 2
        assert emu.app.stats["batch_lines"] - before == 2 and emu.calls() == 2  # batch lines only
        assert len(reask.batches) == 2  # one job per tier
        # next pass: answered from memory, at the batch price
        status, reply = reask.call("fast", body(texts[0]), 1.0)
        assert status == 200 and reply["decision"] == "allow"
        status, data, _ = await reask.request("balanced", msgspec.json.encode(body(texts[1])))
        assert status == 200 and msgspec.json.decode(data)["decision"] == "deny"
        assert reply["usage"]["cost_usd"] > 0 and reply["emulated"] is True
        assert await reask.ask_pending() == 0 and len(reask.batches) == 2  # nothing new: no job
    finally:
        await client.close()


async def test_no_groq_endpoint_is_a_503_that_names_the_settings():
    asker = BatchAsker(GroqSettings(), default_catalog())
    await asker.start()
    with pytest.raises(Unavailable, match="GROQPOLICY_EMULATOR_URL") as found:
        asker.require()
    assert found.value.status == 503
    await asker.stop()
