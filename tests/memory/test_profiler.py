"""The generic memory profiler: exact byte counts, categories, nesting, estimates, CUDA figures."""

import pytest
import torch
from torch import nn

from patchlab.memory import CATEGORIES, MemoryProfiler, estimating, format_bytes, profile

F32 = 4


def test_exact_bytes_of_allocations_and_frees():
    with MemoryProfiler() as prof:
        a = torch.empty(1000)  # 4000 B
        b = torch.empty(500)  # 2000 B  -> peak 6000
        del a
        c = torch.empty(200)  # 800 B   -> 2800 live
    rep = prof.report
    assert rep.peak_bytes == 6000
    assert rep.start_bytes == 0
    assert rep.end_bytes == 2800
    assert rep.breakdown == {"weights": 0, "gradients": 0, "optimizer_state": 0, "activations": 0,
                             "temporaries": 6000}
    assert rep.method == "measure" and rep.device == "cpu"
    assert rep.peak_op.startswith("empty")
    del b, c


def test_views_share_one_storage_and_inputs_count_from_the_start():
    x = torch.zeros(1000)  # exists before: counted from the start once it is read
    with MemoryProfiler() as prof:
        v = x[10:]
        w = x.view(10, 100)
        y = v * 2  # 990 floats
    assert prof.report.start_bytes == 1000 * F32
    assert prof.report.peak_bytes == (1000 + 990) * F32
    del w, y


def test_peak_is_before_a_free_that_follows_it():
    with MemoryProfiler() as prof:
        big = torch.ones(10_000)
        small = big[:10].clone()
        del big
        _ = small + 1
    assert prof.report.peak_bytes == (10_000 + 10) * F32
    assert prof.report.end_bytes == 20 * F32


def test_in_place_resize_is_counted():
    with MemoryProfiler() as prof:
        x = torch.empty(10)
        x.resize_(1000)
    assert prof.report.peak_bytes == 1000 * F32


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 8))


def _param_bytes(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters()) * F32


def test_categories_of_a_training_step():
    model = _net()
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(32, 64)
    model(x).sum().backward()
    opt.step()  # Adam's state exists: two moments per parameter plus a step counter each
    model.zero_grad(set_to_none=True)
    with MemoryProfiler([model], opt) as prof:
        model(x).square().mean().backward()
        opt.step()
    rep = prof.report
    assert sum(rep.breakdown.values()) == rep.peak_bytes
    assert rep.weights_bytes == _param_bytes(model)
    assert rep.optimizer_state_bytes >= 2 * _param_bytes(model)
    assert rep.gradients_bytes <= _param_bytes(model)
    assert set(rep.breakdown) == set(CATEGORIES)
    assert rep.start_bytes == rep.weights_bytes + rep.optimizer_state_bytes + x.numel() * F32


def test_activations_are_what_autograd_saves():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128),
                          nn.ReLU(), nn.Linear(128, 8))
    x = torch.randn(32, 64)
    with MemoryProfiler([model]) as prof:
        loss = model(x).sum()  # peak at the end of the forward: saved tensors are activations
    assert prof.report.activations_bytes >= 3 * 32 * 128 * F32  # the ReLU outputs (inputs of the next Linear)
    with torch.no_grad(), MemoryProfiler([model]) as prof2:
        model(x).sum()
    assert prof2.report.activations_bytes == 0
    assert prof2.report.peak_bytes < prof.report.peak_bytes
    del loss


def test_gradients_category_after_backward():
    model = _net()
    x = torch.randn(4, 64)
    with MemoryProfiler([model]) as prof:
        model(x).sum().backward()
        keep = torch.empty(10_000_000 // F32)  # a new peak after backward: every .grad is alive
    assert prof.report.gradients_bytes == _param_bytes(model)
    del keep


def test_repeated_use_gives_fresh_figures_and_a_profiler_is_used_once():
    model = _net()
    x = torch.randn(16, 64)
    reports = []
    for _ in range(2):
        with MemoryProfiler([model]) as prof:
            model(x).sum().backward()
        model.zero_grad(set_to_none=True)
        reports.append(prof.report)
    assert reports[0].peak_bytes == reports[1].peak_bytes
    assert reports[0].breakdown == reports[1].breakdown
    with pytest.raises(RuntimeError, match="used once"):
        with prof:
            pass


def test_nested_profilers_each_see_their_own_block():
    with MemoryProfiler() as outer:
        a = torch.empty(1000)
        with MemoryProfiler() as inner:
            b = torch.empty(250)
        del b
    assert inner.report.peak_bytes == 250 * F32
    assert outer.report.peak_bytes == 1250 * F32
    del a


def test_profile_function_returns_result_and_report():
    out, rep = profile(lambda n: torch.ones(n) * 3, 100)
    assert out.sum().item() == 300
    assert rep.peak_bytes == 200 * F32  # ones and the product


def test_device_filter_counts_only_that_device():
    with MemoryProfiler(device="meta") as prof:
        torch.empty(1000)
        torch.empty(1000, device="meta")
    assert prof.report.peak_bytes == 1000 * F32
    assert prof.report.device == "meta"


def _conv_step(model, x):
    model(x).square().mean().backward()


@pytest.mark.parametrize("grad", [True, False])
def test_estimate_agrees_with_measurement(grad):
    def build():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(),
                            nn.Conv2d(16, 16, 3, padding=1), nn.Flatten(), nn.Linear(16 * 16 * 16, 10))
        return net, torch.randn(8, 3, 16, 16)

    def run(net, x):
        if grad:
            _conv_step(net, x)
        else:
            with torch.no_grad():
                net(x).sum()

    net, x = build()
    with MemoryProfiler([net]) as real:
        run(net, x)
    with estimating():
        fnet, fx = build()
        with MemoryProfiler([fnet]) as fake:
            run(fnet, fx)
    assert fake.report.method == "estimate" and real.report.method == "measure"
    assert fake.report.peak_bytes == pytest.approx(real.report.peak_bytes, rel=0.02)
    assert fake.report.breakdown == real.report.breakdown


def test_estimating_allocates_nothing_and_answers_scalar_reads():
    with estimating():
        x = torch.empty(2 ** 40, dtype=torch.uint8)  # a terabyte: only shapes
        with MemoryProfiler() as prof:
            y = x + 1
            flag = bool((y > 0).any())
    assert prof.report.peak_bytes == 3 * 2 ** 40 + 1  # x, x + 1, the boolean mask and any()'s result
    assert flag is False


def test_format_bytes_and_report_format():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2 ** 30) == "3.0 GiB"
    _, rep = profile(lambda: torch.ones(10))
    text = rep.format()
    assert "peak" in text and "temporaries" in text
    d = rep.to_dict()
    assert d["peak_bytes"] == 40 and d["temporaries_bytes"] == 40 and d["allocator_step_peak_bytes"] is None


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_allocator_peak_beside_tensor_level():
    torch.zeros(1, device="cuda")  # initialise CUDA
    with MemoryProfiler(device="cuda") as prof:
        a = torch.empty(2 ** 20, device="cuda")
        b = torch.empty(2 ** 20, device="cuda")
        del a, b
    rep = prof.report
    assert rep.peak_bytes == 2 * 2 ** 22
    assert rep.allocator_peak_bytes >= rep.peak_bytes
    assert rep.allocator_step_peak_bytes == pytest.approx(rep.peak_bytes, rel=0.01)


@cuda
def test_cuda_nested_allocator_peaks():
    torch.zeros(1, device="cuda")
    with MemoryProfiler(device="cuda") as outer:
        a = torch.empty(2 ** 22, device="cuda")
        del a
        with MemoryProfiler(device="cuda") as inner:
            b = torch.empty(2 ** 20, device="cuda")
        del b
    assert outer.report.allocator_step_peak_bytes >= 2 ** 24
    assert inner.report.allocator_step_peak_bytes == pytest.approx(2 ** 22, rel=0.01)
