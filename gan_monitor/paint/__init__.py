"""Paint concepts into and out of generated images in the browser (paper Sec. 4.4; GANPaint).

Pick a concept, paint over a generated image: the generator draws the concept where you
paint (its units are set to their insertion values there) or removes it (units set to 0),
with the project's edit rule at one layer (docs/method.md §6)::

    from gan_monitor.paint import serve
    serve(generator, "layer3", segmenter)            # dissects layer3, then http://127.0.0.1:8000/

    gan-monitor paint run.ckpt --layer layer3        # the same from a checkpoint

* ``session.PaintSession``: the units of each concept, the samples, edits from strokes
  (torch only);
* ``server.make_app(session)``: the FastAPI app (for ``fastapi.testclient.TestClient``);
  ``server.serve(...)``: dissect, build the app, run uvicorn (``serve_session`` for a
  ready session); ``server.ServerThread``: uvicorn in a background thread;
* ``messages``: request checks and PNG data URLs; ``static/``: the page (plain HTML/JS).

The server needs the optional extra ``gan-monitor[paint]`` (FastAPI, uvicorn), imported only
when an app is made.
"""
from __future__ import annotations

__all__ = ["PaintSession", "Stroke", "make_app", "serve", "serve_session", "ServerThread"]

_LAZY = {"PaintSession": "gan_monitor.paint.session", "Stroke": "gan_monitor.paint.session",
         "make_app": "gan_monitor.paint.server", "serve": "gan_monitor.paint.server",
         "serve_session": "gan_monitor.paint.server", "ServerThread": "gan_monitor.paint.server"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gan_monitor.paint' has no attribute {name!r}")
