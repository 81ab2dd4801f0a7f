"""Tests of onnxopt.benchmark: real onnxruntime sessions, structure and sanity of the numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.runtime import SessionConfig, needs_custom_ops
from onnxopt.measure.benchmark import BenchConfig, BenchResult, LatencyStats, benchmark
from onnxopt.measure.stats import RatioCI, latency_ratio


def make_conv_stack(seed: int = 0, channels: int = 32, size: int = 48, layers: int = 3) -> onnx.ModelProto:
    """A Conv-Relu stack big enough that one run takes around a millisecond on one core."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, cin = "input", 3
    for i in range(layers):
        w = (rng.standard_normal((channels, cin, 3, 3)) * 0.1).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, cin = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "conv_stack",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", channels])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_latency_stats_from_samples() -> None:
    s = LatencyStats.from_samples([1.0, 2.0, 3.0, 4.0], batch=2)
    assert s.n == 4 and s.min_ms == 1.0 and s.max_ms == 4.0
    assert s.mean_ms == pytest.approx(2.5)
    assert s.p50_ms == pytest.approx(2.5)
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p95_ms <= s.p99_ms <= s.max_ms
    assert s.cv == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2.5)
    assert s.throughput_per_s == pytest.approx(2 * 1000 / 2.5)


def test_latency_ratio_detects_a_real_difference_and_none() -> None:
    rng = np.random.default_rng(0)
    ref = 1.0 + 0.05 * rng.standard_normal(200)
    fast = 0.5 * ref + 0.01 * rng.standard_normal(200)
    r = latency_ratio(fast, ref)
    assert isinstance(r, RatioCI)
    assert r.low <= r.ratio <= r.high
    assert r.ratio == pytest.approx(0.5, abs=0.03)
    assert r.significant and r.speedup == pytest.approx(1 / r.ratio)
    same = latency_ratio(ref.copy(), ref)
    assert same.ratio == 1.0 and not same.significant
    assert "not significant" in same.describe()


def _result(samples: np.ndarray, blocks: tuple[int, ...] = ()) -> BenchResult:
    return BenchResult("m", None, 0, tuple(samples), LatencyStats.from_samples(samples), 1.0, None,
                       block_sizes=blocks)


def test_subprocess_ratio_ci_includes_process_to_process_variation() -> None:
    rng = np.random.default_rng(0)
    # Each process has its own level (+-20%); within a process the runs are tight.
    levels_a, levels_b = [1.0, 1.2, 0.8], [1.15, 0.85, 1.0]
    a = np.concatenate([lv + 0.01 * rng.standard_normal(20) for lv in levels_a])
    b = np.concatenate([lv + 0.01 * rng.standard_normal(20) for lv in levels_b])
    naive = latency_ratio(_result(b), _result(a), n_boot=500)
    blocked = latency_ratio(_result(b, (20, 20, 20)), _result(a, (20, 20, 20)), n_boot=500)
    assert blocked.ratio == naive.ratio
    assert blocked.high - blocked.low > 2 * (naive.high - naive.low)
    assert not blocked.significant


def test_config_validation_names_the_fix() -> None:
    with pytest.raises(InvalidInputError, match="runs must be >= 2"):
        BenchConfig(runs=1)
    with pytest.raises(InvalidInputError, match="interleaved, subprocess"):
        BenchConfig(isolation="threads")
    with pytest.raises(InvalidInputError, match="available"):
        BenchConfig(session=SessionConfig(provider="CUDAExecutionProvider"))
    assert BenchConfig().session.allow_spinning is False


def test_benchmark_digits_structure(digits_cnn: Path) -> None:
    res = benchmark([digits_cnn], BenchConfig(runs=20, warmup=2))
    assert len(res) == 1
    r = res[0]
    assert isinstance(r, BenchResult)
    assert r.name == "digits_cnn.onnx" and r.path == str(digits_cnn)
    assert r.file_size == digits_cnn.stat().st_size
    assert len(r.samples_ms) == 20 == r.stats.n
    assert all(s > 0 for s in r.samples_ms)
    assert r.stats.min_ms <= r.stats.p50_ms <= r.stats.max_ms
    assert r.session_create_ms > 0 and r.peak_rss_mb is None
    assert r.isolation == "interleaved"
    d = r.to_dict()
    assert "samples_ms" not in d and d["stats"]["n"] == 20


def test_two_copies_of_one_model_ratio_near_one() -> None:
    model = make_conv_stack()
    cfg = BenchConfig(runs=60, warmup=3, session=SessionConfig(intra_op_threads=1, allow_spinning=False))
    a, b = benchmark([model, model], cfg, names=["a", "b"])
    assert a.stats.p50_ms > 0.2  # big enough that timer noise does not dominate
    r = latency_ratio(b, a)
    assert r.paired and r.n == 60
    # Wide tolerance: the machine is shared and noisy; the CI must still cover 1.0 or be close.
    assert r.low < 1.1 and r.high > 0.9
    # Preempted runs can make the samples bimodal; the lower quartile stays steady.
    assert 0.8 < latency_ratio(b, a, quantile=0.25).ratio < 1.25


def test_a_slower_model_is_detected() -> None:
    small, big = make_conv_stack(layers=2), make_conv_stack(layers=6)
    cfg = BenchConfig(runs=40, warmup=2, session=SessionConfig(intra_op_threads=1))  # spinning on: forced off
    a, b = benchmark([small, big], cfg, names=["small", "big"])
    r = latency_ratio(b, a)
    assert r.ratio > 1.5 and r.speedup < 1 and r.high > 1.5
    # On a shared machine many runs get preempted (bimodal samples) and the median CI widens;
    # the lower quartile stays clear of that.
    q = latency_ratio(b, a, quantile=0.25)
    assert q.significant and q.low > 1.2 and q.quantile == 0.25


def test_thread_sweep_row_per_setting(mlp_model: onnx.ModelProto) -> None:
    res = benchmark([mlp_model], BenchConfig(runs=5, warmup=1), threads=[1, 2])
    assert [r.threads for r in res] == [1, 2]
    assert "1 thread)" in res[0].label and "2 threads" in res[1].label


def test_progress_and_duration(mlp_model: onnx.ModelProto) -> None:
    calls: list[tuple[int, int]] = []
    res = benchmark([mlp_model, mlp_model], BenchConfig(runs=5, duration_s=0.2), progress=lambda d, t: calls.append((d, t)))
    assert res[0].stats.n >= 5 and res[0].stats.n == res[1].stats.n
    assert calls[-1][0] == calls[-1][1]
    assert calls[0][0] == 2


def test_feed_checked_against_model(mlp_model: onnx.ModelProto) -> None:
    bad = {"input": np.zeros((1, 3), np.float32)}
    with pytest.raises(InvalidInputError, match=r"input 'input': expected shape \(batch, 16\), got \(1, 3\)"):
        benchmark([mlp_model], BenchConfig(runs=2), feed=bad)
    good = {"input": np.ones((4, 16), np.float32), "other": np.zeros(1)}
    res = benchmark([mlp_model], BenchConfig(runs=2, warmup=0), feed=good)
    assert res[0].stats.n == 2


def test_batch_and_shape_override(convnet_model: onnx.ModelProto) -> None:
    res = benchmark([convnet_model], BenchConfig(runs=3, batch=4))
    assert res[0].batch == 4
    with pytest.raises(InvalidInputError, match="dimension fixed at 3"):
        benchmark([convnet_model], BenchConfig(runs=3, shape_overrides={"input": (1, 4, 16, 16)}))


def test_subprocess_isolation_and_memory(mlp_model: onnx.ModelProto) -> None:
    cfg = BenchConfig(runs=5, warmup=1, isolation="subprocess", blocks=2, measure_memory=True)
    (a,) = benchmark([mlp_model], cfg)
    assert a.isolation == "subprocess" and a.stats.n == 5
    assert a.block_sizes == (3, 2)
    assert a.peak_rss_mb is not None and 0 <= a.peak_rss_mb < 500
    assert a.session_create_ms > 0


def test_needs_custom_ops(mlp_model: onnx.ModelProto) -> None:
    assert not needs_custom_ops(mlp_model)
    m = onnx.ModelProto()
    m.CopyFrom(mlp_model)
    m.opset_import.append(helper.make_opsetid("ai.onnx.contrib", 1))
    assert needs_custom_ops(m)


def test_peak_rss_is_the_workers_own(mlp_model: onnx.ModelProto) -> None:
    # ru_maxrss survives execve: a worker must not report the peak of the process that started it.
    from onnxopt.measure.isolation import measure_peak_rss

    big = np.ones(25_000_000)  # ~200 MB touched in this process
    assert big[-1] == 1.0
    del big
    mb = measure_peak_rss(mlp_model, {"input": np.ones((1, 16), np.float32)})
    assert 0 <= mb < 100
