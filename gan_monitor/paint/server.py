"""The web server of the painting page (FastAPI + uvicorn: ``pip install gan-monitor[paint]``).

Routes (all answers JSON except the page and its two static files)::

    GET  /                      the page (gan_monitor/paint/static/index.html)
    GET  /paint.js, /paint.css  its script and style
    GET  /api/info              layer, sizes, concepts with their units and ranking, sample ids, limits
    GET  /api/samples/{id}      one sample: image and segmentation overlay (PNG data URLs)
    POST /api/samples           {"count": k}: k new samples (the next seeds)
    POST /api/edit              {"sample": id, "strokes": [...]}: edited image, segmentation, change

Bad requests get a 4xx answer ``{"error": "<what is wrong and what is accepted>"}``: 413 for a
body over the size limit, 404 for an unknown sample id, 422 for any other invalid field. The
client only names sample ids and concepts, never files or modules. The server binds to
127.0.0.1 unless told otherwise (then it warns: anyone who can reach the address can use the
model). Bound to loopback, it also checks the ``Host`` header against the loopback names, so
a web page elsewhere cannot reach it through DNS rebinding.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations
(``Request``, imported lazily inside ``make_app``) at run time.
"""
import ipaddress
import json
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from gan_monitor.core.errors import CommandError
from gan_monitor.paint.messages import (
    MAX_NEW_SAMPLES,
    concept_colours,
    image_url,
    max_body_bytes,
    overlay_url,
    parse_edit,
    parse_new_samples,
    sample_json,
)
from gan_monitor.paint.session import PaintSession

__all__ = ["make_app", "serve", "serve_session", "ServerThread", "LOOPBACK", "is_loopback",
           "require_server_packages"]

STATIC = Path(__file__).resolve().parent / "static"
_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/paint.js": ("paint.js", "text/javascript"),
          "/paint.css": ("paint.css", "text/css")}
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # the Host header names accepted when bound to loopback
_SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                                "frame-ancestors 'none'",
                     "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_server_packages() -> None:
    """Raise a CommandError naming the extra when FastAPI or uvicorn is missing."""
    missing = []
    for name in ("fastapi", "uvicorn"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CommandError(f"the painting server needs {' and '.join(missing)}: "
                           f"pip install 'gan-monitor[paint]' (FastAPI and uvicorn).")


def make_app(session: PaintSession, *, allowed_hosts: list[str] | None = None, max_body: int | None = None):
    """A FastAPI app serving ``session`` (usable with ``fastapi.testclient.TestClient``).

    ``allowed_hosts``: accepted ``Host`` header names (default: any); ``max_body``: largest
    request body in bytes (default: room for ``session.max_strokes`` full-image masks)."""
    require_server_packages()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    limit = int(max_body) if max_body is not None else max_body_bytes(session)
    colours = concept_colours(session.concept_names)
    files = {route: ((STATIC / name).read_bytes(), kind) for route, (name, kind) in _FILES.items()}
    app = FastAPI(title="gan_monitor paint", docs_url=None, redoc_url=None, openapi_url=None)
    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    def error(status: int, message: str):
        return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise _BodyTooLarge(limit)
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise _BodyTooLarge(limit)
        try:
            return json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"the request body is not valid JSON ({err}).") from None

    async def answer(work: Callable[[], Any]):
        """Run ``work`` off the event loop; its ValueError -> 422, LookupError -> 404."""
        try:
            return JSONResponse(await run_in_threadpool(work), headers={"Cache-Control": "no-store"})
        except LookupError as err:
            return error(404, str(err.args[0] if err.args else err))
        except ValueError as err:
            return error(422, str(err))

    def static_route(route: str):
        content, kind = files[route]

        async def handler():
            return Response(content, media_type=kind, headers=_SECURITY_HEADERS)
        return handler

    for route in files:
        app.add_api_route(route, static_route(route), methods=["GET"], include_in_schema=False)

    @app.get("/api/info")
    async def info():
        return await answer(lambda: _info(session, colours, limit))

    @app.get("/api/samples/{sample_id}")
    async def get_sample(sample_id: str):
        if not sample_id.isdigit():
            return error(404, f"unknown sample id {sample_id!r}; sample ids are integers from /api/info.")
        return await answer(lambda: sample_json(session, int(sample_id), colours))

    @app.post("/api/samples")
    async def new_samples(request: Request):
        try:
            count = parse_new_samples(await read_json(request))
        except _BodyTooLarge as err:
            return error(413, str(err))
        except ValueError as err:
            return error(422, str(err))
        return await answer(lambda: {"samples": [sample_json(session, s.id, colours)
                                                 for s in session.new_samples(count)],
                                     "held": session.sample_ids})

    @app.post("/api/edit")
    async def edit(request: Request):
        try:
            body = await read_json(request)
        except _BodyTooLarge as err:
            return error(413, str(err))
        except ValueError as err:
            return error(422, str(err))

        def work():
            sample_id, strokes = parse_edit(body, session)
            result = session.edit(sample_id, strokes)
            return {"sample": sample_id, "strokes": len(strokes), "image": image_url(result.image),
                    "segmentation": overlay_url(result.labels, colours), "change": result.change}
        return await answer(work)

    return app


class _BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"the request body is larger than {limit} bytes; send fewer strokes (press reset) "
                         f"or a mask of the image's size.")


def _info(session: PaintSession, colours, limit: int) -> dict[str, Any]:
    d = session.dissection
    return {
        "layer": session.layer, "units": session.layer_shape[0], "layer_size": list(session.layer_shape[1:]),
        "image_size": list(session.image_size), "ranking": session.ranking,
        "units_per_concept": session.units_per_concept,
        "dissection": {k: d.settings.get(k) for k in ("n", "seed", "threshold", "cutoff") if k in d.settings},
        "concepts": [{"name": e.name, "category": e.category, "units": list(e.units),
                      "scores": [round(s, 4) for s in e.scores], "color": "#%02x%02x%02x" % colours[e.index]}
                     for e in session.concepts.values()],
        "palette": [{"name": n, "color": "#%02x%02x%02x" % c} for n, c in zip(session.concept_names, colours)][1:],
        "samples": session.sample_ids,
        "limits": {"max_strokes": session.max_strokes, "max_body_bytes": limit, "max_new_samples": MAX_NEW_SAMPLES,
                   "max_samples": session.max_samples},
    }


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerThread:
    """Run ``app`` with uvicorn in a background thread (tests, benchmarks, notebooks)::

        with ServerThread(app) as server:
            requests.get(server.url + "/api/info")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, log_level: str = "warning"):
        import uvicorn

        self.host, self.port = host, port or _free_port(host)
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level=log_level,
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="gan_monitor-paint", daemon=True)

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise CommandError(f"the painting server did not start on {self.url} (is port {self.port} "
                                   f"in use? pick another with --port).")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(generator, layer: str, segmenter, *, host: str = "127.0.0.1", port: int = 8000, block: bool = True,
          echo: Callable[[str], None] = print, **options):
    """Dissect ``layer`` (or use ``dissection=``) and serve the painting page on ``host:port``.

    ``options`` go to :meth:`PaintSession.create` (``dissection``, ``n``, ``seed``, ``threshold``,
    ``cutoff``, ``units_per_concept``, ``units``/``ranking``, ``samples``, ``input_fn``, ``device``...).
    ``block=False`` returns a started :class:`ServerThread` (call ``.stop()``); otherwise runs
    until interrupted. A host other than loopback is served with a warning: anyone who can
    reach it can use the model.
    """
    require_server_packages()
    session = PaintSession.create(generator, layer, segmenter, **options)
    return serve_session(session, host=host, port=port, block=block, echo=echo)


def serve_session(session: PaintSession, *, host: str = "127.0.0.1", port: int = 8000, block: bool = True,
                  echo: Callable[[str], None] = print, warn: bool = True):
    """Serve a ready :class:`PaintSession` (see :func:`serve`)."""
    require_server_packages()
    if is_loopback(host):
        allowed = sorted({*LOOPBACK, "[::1]", host})
    else:
        if warn:
            warnings.warn(f"gan_monitor paint: serving on {host}, not loopback: anyone who can reach this address "
                          f"can use the page and the model (no authentication).", stacklevel=2)
        allowed = None
    app = make_app(session, allowed_hosts=allowed)
    server = ServerThread(app, host, port).start()
    echo(f"painting {session.layer}: {len(session.concepts)} concept(s) with units; open {server.url}/ "
         f"(Ctrl-C stops)")
    if not block:
        return server
    try:
        while server.thread.is_alive():
            server.thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return None
