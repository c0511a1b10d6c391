"""The reference the serving benchmark compares storerec with: a hand-written Starlette app that
answers ``POST /recommend`` with implicit's own ``model.recommend`` and nothing else.

Not a product path (issue #16 item 3): no filters, reasons, diversity, context, event log,
validation beyond the JSON parse, admin or status routes. It is what an engineer would write in
an afternoon to serve the same ALS factors, and so the ceiling a framework-free server reaches on
this machine: the benchmark reports storerec's full pipeline as a fraction of it.

It loads the same registered version as the service (the ``champion`` alias of the settings'
registered model, through MLflow), puts its factors into implicit's
``AlternatingLeastSquares`` and the version's seen-items matrix beside it. Run it as the
benchmark does::

    python -m storerec.tools.baseline_server --config storerec.toml --port 3100

(one uvicorn worker, uvloop and httptools as uvicorn picks them, no access log).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def load_model(config: Path, ref: str = "champion") -> Any:
    """The storerec model of ``ref`` in the registry of the settings file ``config``."""
    from storerec.core.settings import load_settings
    from storerec.models.base import ModelBase
    from storerec.registry import tracking

    settings = load_settings(config, environ={})
    client = tracking.configure(settings.mlflow)
    version = tracking.resolve_version(client, settings.registered_model_name(), ref)
    tmp = Path(tempfile.mkdtemp(prefix="storerec-baseline-"))
    try:
        folder = tracking.download_version(client, version, tmp)
        return ModelBase.load(folder / tracking.ARTIFACT_MODEL)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_app(model: Any) -> Starlette:
    """The Starlette app over ``model`` (a storerec ALS or BPR model: user and item factors)."""
    from implicit.cpu.als import AlternatingLeastSquares

    als = AlternatingLeastSquares(factors=model.user_factors.shape[1])
    als.user_factors = np.ascontiguousarray(model.user_factors)
    als.item_factors = np.ascontiguousarray(model.item_factors)
    seen = model.seen.tocsr()
    user_index = {u: i for i, u in enumerate(model.users.external)}
    item_ids = list(model.items.external)

    async def recommend(request: Request) -> JSONResponse:
        body = await request.json()
        uid = user_index.get(body.get("user_id"))
        if uid is None:
            return JSONResponse({"error": "unknown user"}, status_code=404)
        ids, scores = als.recommend(uid, seen[uid], N=int(body.get("k", 10)), filter_already_liked_items=True)
        return JSONResponse({"items": [{"item_id": item_ids[i], "score": float(s)} for i, s in zip(ids, scores)]})

    return Starlette(routes=[Route("/recommend", recommend, methods=["POST"])])


def main(argv: list[str] | None = None) -> None:
    import uvicorn
    from threadpoolctl import threadpool_limits

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ref", default="champion")
    args = parser.parse_args(argv)
    app = build_app(load_model(args.config, args.ref))
    with threadpool_limits(limits=1, user_api="blas"):  # as the service (serving.blas_threads = 1)
        uvicorn.run(app, host="127.0.0.1", port=args.port, workers=1, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
