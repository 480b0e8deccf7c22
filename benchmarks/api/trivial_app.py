"""The framework floor: a Litestar app whose `/api/v1/evaluate` decodes the same msgspec request
struct as the control plane and answers a fixed decision. Served by uvicorn exactly like the
control plane (`uvicorn.run(app, host, port, log_level="warning", access_log=False)`)."""

from __future__ import annotations

import sys

import uvicorn
from litestar import Litestar, post
from litestar.params import JSONBody

from controlplane.evaluation.schemas import EvaluateRequest


@post("/api/v1/evaluate", status_code=200)
async def evaluate(data: JSONBody[EvaluateRequest]) -> dict:
    return {"decision": "allow", "confidence_score": 1.0, "constitutional_hash": data.constitutional_hash}


app = Litestar(route_handlers=[evaluate], debug=False)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
