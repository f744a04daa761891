"""One way to start the plugin's long work in a napari worker (progress bar, cancel by quit)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any


class WorkFailed(Exception):
    """A ``RuntimeError`` (torch's out of memory, a CUDA error, ...) raised inside a worker.

    superqt's worker takes a ``RuntimeError`` escaping the generator for "the worker was
    deleted" and returns without emitting ``errored`` or ``finished``, which would leave the
    widget "running" for good; re-raised as this type, it reaches ``_on_error``.
    """


def _guarded(
    function: Callable[..., Generator[Any, None, Any]], *args: Any
) -> Generator[Any, None, Any]:
    try:
        return (yield from function(*args))
    except RuntimeError as exc:
        raise WorkFailed(f"{type(exc).__name__}: {exc}") from exc


def _deleted(widget: Any) -> bool:
    """Whether Qt has destroyed ``widget`` (its viewer was closed) while Python still holds it."""
    from qtpy.QtCore import QObject

    if not isinstance(widget, QObject):
        return False
    try:
        from qtpy import sip
    except ImportError:  # PySide
        from qtpy import shiboken

        return not shiboken.isValid(widget)
    return sip.isdeleted(widget)


def worker_for(
    owner: Any, function: Callable[..., Any], *args: Any, anchor: Any = None, **progress: Any
) -> Any:
    """An unstarted napari worker running the generator ``function(*args)``; its signals go to
    ``owner``'s ``_on_update`` (yielded), ``_on_returned``, ``_on_error``, ``_on_aborted`` and
    ``_on_finished``, and every run ends in exactly one of returned / error / aborted before
    finished. ``anchor``: the widget whose labels the handlers touch (default ``owner``);
    nothing is delivered once Qt has destroyed it. ``progress``: the progress bar's settings
    (``desc``, ``total``)."""
    from napari.qt.threading import create_worker

    anchor = owner if anchor is None else anchor
    settled = []

    def deliver(handler: Callable[..., None], ends: bool) -> Callable[..., None]:
        def call(*result: Any) -> None:
            if ends:
                settled.append(handler)
            if not _deleted(anchor):
                handler(*result)

        return call

    def finished() -> None:
        if _deleted(anchor):  # the viewer was closed during the run: nobody to tell
            return
        # a Cancel that arrives after the generator's last yield makes superqt drop the
        # result without emitting "aborted": the run still ends as cancelled for the widget
        if not settled:
            owner._on_aborted()
        owner._on_finished()

    return create_worker(
        _guarded,
        function,
        *args,
        _start_thread=False,
        _progress=progress,
        _connect={
            "yielded": deliver(owner._on_update, ends=False),
            "returned": deliver(owner._on_returned, ends=True),
            "errored": deliver(owner._on_error, ends=True),
            "aborted": deliver(owner._on_aborted, ends=True),
            "finished": finished,
        },
    )
