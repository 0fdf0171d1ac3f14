"""core/chunks: how a tensor is cut into chunks, how chunks are spread over threads, cancellation, the GC pause."""
import gc

import pytest
import torch

from explorer.core import chunks as C
from explorer.core.gc_pause import gc_paused
from explorer.errors import Cancelled


@pytest.mark.parametrize("make", [
    lambda: torch.arange(10_007.0),                                   # contiguous
    lambda: torch.arange(3 * 5 * 7.0).reshape(3, 5, 7).transpose(0, 2),  # strided
    lambda: torch.arange(6.0 * 4000).reshape(6, 4000)[:, ::3],        # rows of a view
    lambda: torch.tensor(3.0),                                        # 0-d
])
def test_iter_chunks_yields_every_element_in_logical_order(make):
    t = make()
    parts = list(C.iter_chunks(t, 1000))
    assert all(p.dim() == 1 and p.numel() <= 1000 for p in parts)
    assert torch.equal(torch.cat(parts), t.reshape(-1))


def test_paired_chunks_align_two_tensors_of_the_same_shape():
    a = torch.arange(4000.0).reshape(40, 100)
    b = a.t().contiguous().t()     # same values, another layout
    for ca, cb in C.paired_chunks(a, b, 256):
        assert torch.equal(ca, cb)


def test_dense_order_reads_a_saved_transpose_sequentially():
    t = torch.randn(30, 40).t()
    d = C.dense_order(t)
    assert d.is_contiguous() and sorted(d.shape) == sorted(t.shape)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dynamic", [False, True])
def test_run_chunked_does_every_chunk_once_and_reports_progress(threads, dynamic):
    progress = []
    states = C.run_chunked(25, list, lambda st, i: st.append(i) or 10, total=250, threads=threads, dynamic=dynamic,
                           progress=lambda d, t: progress.append((d, t)))
    done = sorted(i for st in states for i in st)
    assert done == list(range(25)) and len(states) == min(threads, 25)
    assert progress[-1] == (250, 250) and all(b >= a for (a, _), (b, _) in zip(progress, progress[1:]))


@pytest.mark.parametrize("threads", [1, 2])
def test_run_chunked_stops_when_asked(threads):
    calls = []
    with pytest.raises(Cancelled):
        C.run_chunked(1000, object, lambda st, i: calls.append(i) or 1, total=1000, threads=threads,
                      should_stop=lambda: len(calls) >= 5)
    assert len(calls) < 1000


def test_run_chunked_raises_a_workers_error_in_the_caller():
    def work(st, i):
        if i == 7:
            raise ValueError("chunk 7")
        return 1
    with pytest.raises(ValueError, match="chunk 7"):
        C.run_chunked(20, object, work, total=20, threads=2)


def test_single_intraop_sets_torch_threads_to_one_and_restores_them_after_the_last_user():
    before = torch.get_num_threads()
    with C.single_intraop():
        assert torch.get_num_threads() == 1
        with C.single_intraop():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_check_stop():
    C.check_stop(None)
    C.check_stop(lambda: False)
    with pytest.raises(Cancelled):
        C.check_stop(lambda: True)


def test_gc_paused_restores_the_previous_state():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
