"""``plugin._threading.worker_for``: every run of a widget's worker ends in exactly one of
returned / error / aborted, then finished, on a real napari (superqt) worker thread.

Two endings superqt itself leaves open are closed here: a ``RuntimeError`` (torch's out of
memory) escaping the generator, which superqt takes for a deleted worker and reports nowhere,
and a Cancel that arrives after the generator's last yield, which drops the result without an
"aborted" signal. Either one used to leave a widget showing "running" / "Cancelling…" for good.
"""

from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.gui


class Owner:
    """Records the handler calls a widget would receive, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def _on_update(self, value: object) -> None:
        self.calls.append(("update", value))

    def _on_returned(self, value: object) -> None:
        self.calls.append(("returned", value))

    def _on_error(self, exc: BaseException) -> None:
        self.calls.append(("error", exc))

    def _on_aborted(self) -> None:
        self.calls.append(("aborted", None))

    def _on_finished(self) -> None:
        self.calls.append(("finished", None))

    def endings(self) -> list[str]:
        return [name for name, _ in self.calls if name != "update"]


def _run(qtbot, owner: Owner, generator, *args):
    from napari_semiconv.plugin._threading import worker_for

    worker = worker_for(owner, generator, *args, desc="test")
    with qtbot.waitSignal(worker.finished, timeout=20_000):
        worker.start()
    qtbot.waitUntil(lambda: "finished" in owner.endings(), timeout=5_000)
    return worker


def _counts(n: int):
    yield from range(n)
    return "done"


def test_a_plain_run_returns_its_value(qtbot):
    owner = Owner()
    _run(qtbot, owner, _counts, 3)
    assert [v for name, v in owner.calls if name == "update"] == [0, 1, 2]
    assert owner.endings() == ["returned", "finished"]
    assert owner.calls[-2] == ("returned", "done")


def _out_of_memory():
    import torch

    yield "loading"
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_torch_runtime_error_reaches_the_error_handler(qtbot):
    from napari_semiconv.plugin._threading import WorkFailed

    owner = Owner()
    _run(qtbot, owner, _out_of_memory)
    assert owner.endings() == ["error", "finished"]
    exc = owner.calls[-2][1]
    assert isinstance(exc, WorkFailed)
    assert "OutOfMemoryError" in str(exc) and "2.00 GiB" in str(exc)


def _waits_after_its_last_yield(gate: threading.Event):
    yield "last"
    assert gate.wait(10), "the test never opened the gate"
    return "result nobody asked for any more"


def test_cancel_after_the_last_yield_ends_as_aborted(qtbot):
    from napari_semiconv.plugin._threading import worker_for

    owner, gate = Owner(), threading.Event()
    worker = worker_for(owner, _waits_after_its_last_yield, gate, desc="test")
    with qtbot.waitSignal(worker.yielded, timeout=20_000):
        worker.start()
    worker.quit()  # the user's Cancel, while the generator is past its last yield
    with qtbot.waitSignal(worker.finished, timeout=20_000):
        gate.set()
    qtbot.waitUntil(lambda: "finished" in owner.endings(), timeout=5_000)
    assert owner.endings() == ["aborted", "finished"]
