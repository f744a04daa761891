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


def worker_for(owner: Any, function: Callable[..., Any], *args: Any, **progress: Any) -> Any:
    """An unstarted napari worker running the generator ``function(*args)``; its signals go to
    ``owner``'s ``_on_update`` (yielded), ``_on_returned``, ``_on_error``, ``_on_aborted`` and
    ``_on_finished``, and every run ends in exactly one of returned / error / aborted before
    finished. ``progress``: the progress bar's settings (``desc``, ``total``)."""
    from napari.qt.threading import create_worker

    settled = []

    def ending(handler: Callable[..., None]) -> Callable[..., None]:
        def call(*result: Any) -> None:
            settled.append(handler)
            handler(*result)

        return call

    def finished() -> None:
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
            "yielded": owner._on_update,
            "returned": ending(owner._on_returned),
            "errored": ending(owner._on_error),
            "aborted": ending(owner._on_aborted),
            "finished": finished,
        },
    )
