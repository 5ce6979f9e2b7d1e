"""Ordered results from spawned workers (:mod:`leanformer.workers`): failures raise instead of hanging, the look-ahead
is bounded, and closing the stream stops the workers."""

from leanformer.workers import in_workers


def test_data_workers_fail_instead_of_hanging_and_stop_when_closed():
    """A failing initializer or a worker that dies raises ``BrokenProcessPool`` (a ``multiprocessing.Pool`` respawns
    such workers and waits forever); results come in order with a bounded look-ahead over an endless stream, and
    closing the stream stops the workers."""
    import itertools
    import operator
    import os
    from concurrent.futures.process import BrokenProcessPool

    import pytest

    with pytest.raises(BrokenProcessPool):
        list(in_workers(abs, [-1, -2], 1, operator.truediv, (1, 0)))  # the initializer raises
    with pytest.raises(BrokenProcessPool):
        list(in_workers(os._exit, [3], 1, int, ()))  # the worker exits mid-task
    assert list(in_workers(abs, range(-9, 0), 2, int, (), ahead=3)) == list(range(9, 0, -1))
    endless = in_workers(abs, itertools.count(-5), 2, int, ())
    assert [next(endless) for _ in range(7)] == [5, 4, 3, 2, 1, 0, 1]
    endless.close()
