"""The exported ONNX graph is kept on disk (folderfit.compute.cpu_engine's graph cache), so a
backbone is exported once per machine instead of once per stage process; a damaged cached
graph, or one that does not compute the module, is exported again."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from folderfit.compute import cpu_engine


def network(scale: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten()).eval()
    with torch.no_grad():
        net[0].weight.mul_(scale)
        net[1].running_mean.uniform_(-0.2, 0.2)
    return net


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache root, no graph memoised in this process, and a count of real exports."""
    monkeypatch.setenv("FOLDERFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_engine, "_GRAPH_MEMO", {})
    exports = []
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: exports.append(1) or real(*a, **k))
    return exports


def forbid_export(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the exporter ran although the graph was cached")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    monkeypatch.setattr(cpu_engine, "_GRAPH_MEMO", {})  # as in a new stage process


def images(n: int = 5, size: int = 20) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_a_second_process_loads_the_graph_without_exporting(cache, monkeypatch):
    first = cpu_engine.export_backbone(network(), 20, 5)(images())
    assert cache == [1]
    stored = list((cpu_engine.graph_file(network(), 20)).parent.glob("*.onnx"))
    assert stored == [cpu_engine.graph_file(network(), 20)]
    forbid_export(monkeypatch)
    again = cpu_engine.export_backbone(network(), 20, 5)(images())  # a new module, same weights
    assert torch.equal(first, again)


def test_the_key_follows_weights_and_image_size(cache):
    base = cpu_engine.graph_key(network(), 20)
    assert cpu_engine.graph_key(network(), 20) == base
    assert cpu_engine.graph_key(network(scale=2.0), 20) != base
    assert cpu_engine.graph_key(network(), 24) != base
    wider = network()
    wider[2] = nn.ReLU6()  # same weights, another function
    assert cpu_engine.graph_key(wider, 20) != base


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "empty", "no header"])
def test_a_damaged_graph_is_exported_again(cache, capsys, damage):
    net = network()
    expected = cpu_engine.export_backbone(net, 20, 5)(images())
    path = cpu_engine.graph_file(net, 20)
    data = path.read_bytes()
    header, _, graph = data.partition(b"\n")
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped byte":
        middle = len(data) - len(graph) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(graph)
    cpu_engine._GRAPH_MEMO.clear()
    capsys.readouterr()
    again = cpu_engine.export_backbone(network(), 20, 5)(images())
    assert cache == [1, 1], "the damaged graph was trusted"
    assert "damaged or incomplete; exported again" in capsys.readouterr().err
    assert torch.equal(expected, again)
    assert path.read_bytes() == data  # stored again, whole


def test_an_intact_graph_of_another_function_is_never_used(cache, capsys):
    """A well-formed file under the key whose graph does not compute the module (a key that
    missed what changed it) fails the parity check and is replaced."""
    cpu_engine.export_backbone(network(scale=3.0), 20, 5)
    other = cpu_engine.graph_file(network(scale=3.0), 20).read_bytes()
    path = cpu_engine.graph_file(network(), 20)
    path.write_bytes(other)
    cpu_engine._GRAPH_MEMO.clear()
    net = network()
    out = cpu_engine.export_backbone(net, 20, 5)(images())
    assert cache == [1, 1]
    assert "does not compute this backbone" in capsys.readouterr().err
    with torch.no_grad():
        assert torch.allclose(out, net(images()), atol=1e-5)
    assert path.read_bytes() != other


def test_a_cache_that_cannot_be_written_costs_only_the_export(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FOLDERFIT_CACHE", str(blocker))
    monkeypatch.setattr(cpu_engine, "_GRAPH_MEMO", {})
    out = cpu_engine.export_backbone(network(), 20, 5)(images())
    assert out.shape == (5, 6)
    assert "ONNX graph not cached" in capsys.readouterr().err
