"""One way to start the plugin's long work in a napari worker (progress bar, cancel by quit)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def worker_for(owner: Any, function: Callable[..., Any], *args: Any, **progress: Any) -> Any:
    """An unstarted napari worker running ``function(*args)``; its signals go to ``owner``'s
    ``_on_update`` (yielded), ``_on_returned``, ``_on_error``, ``_on_aborted`` and
    ``_on_finished``. ``progress``: the progress bar's settings (``desc``, ``total``)."""
    from napari.qt.threading import create_worker

    return create_worker(
        function,
        *args,
        _start_thread=False,
        _progress=progress,
        _connect={
            "yielded": owner._on_update,
            "returned": owner._on_returned,
            "errored": owner._on_error,
            "aborted": owner._on_aborted,
            "finished": owner._on_finished,
        },
    )
