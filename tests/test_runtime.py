"""Device and precision (folderfit.compute.runtime): what auto picks on each kind of machine (GPUs
simulated by replacing torch.cuda's queries), the one-line refusals, and the fp16 path's
gradient scaler in the epoch loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import repo_params
from torch import nn

from folderfit.compute import runtime
from folderfit.errors import PipelineError
from folderfit.images.datasets import Normalizer
from folderfit.params import parse_params
from folderfit.tuning import epoch_loop
from folderfit.tuning.checkpoint import Checkpointer


def fake_gpus(monkeypatch, capability=(7, 5), name="Tesla T4", count=1):
    """torch.cuda as on a machine with `count` GPUs of this kind (nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def one_line_error(call, pattern):
    with pytest.raises(PipelineError, match=pattern) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------ precision
def test_gpu_without_bf16_gets_fp16_with_a_grad_scaler(monkeypatch):
    fake_gpus(monkeypatch, (7, 5), "Tesla T4")
    rt = runtime.pick_runtime("auto", "auto")
    assert rt.device == torch.device("cuda", 0)
    assert rt.dtype == torch.float16 and rt.precision == "fp16" and rt.grad_scaling
    assert rt.grad_scaler().is_enabled()
    assert "Tesla T4 (cuda:0), fp16 autocast + grad scaler" in rt.describe()
    message = one_line_error(lambda: runtime.pick_runtime("bf16", "cuda"), r"'precision' is 'bf16'")
    assert "Tesla T4 has no native bf16 (compute capability 7.5" in message
    assert "fp16" in message  # the fix
    assert runtime.pick_runtime("fp32", "cuda").dtype is None


def test_gpu_with_bf16_gets_bf16_without_a_scaler(monkeypatch):
    fake_gpus(monkeypatch, (9, 0), "NVIDIA H100")
    rt = runtime.pick_runtime("auto", "auto")
    assert rt.dtype == torch.bfloat16 and not rt.grad_scaling
    assert not rt.grad_scaler().is_enabled()
    forced = runtime.pick_runtime("fp16", "cuda")  # allowed when asked for, with its scaler
    assert forced.dtype == torch.float16 and forced.grad_scaler().is_enabled()


def test_cpu_without_native_bf16_runs_fp32_and_refuses_bf16(monkeypatch):
    no_gpu(monkeypatch)
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    rt = runtime.pick_runtime("auto", "auto")
    assert rt.device == torch.device("cpu") and rt.dtype is None and rt.precision == "fp32"
    message = one_line_error(lambda: runtime.pick_runtime("bf16", "cpu"),
                             r"^params.yaml: 'precision' is 'bf16': this CPU has no native bf16")
    assert "15x slower" in message and "set precision: auto in params.yaml" in message
    one_line_error(lambda: runtime.pick_runtime("fp16", "cpu"), r"'precision' is 'fp16': fp16 is for GPUs")


def test_cpu_with_native_bf16_gets_bf16(monkeypatch):
    no_gpu(monkeypatch)
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert runtime.pick_runtime("auto", "cpu").dtype == torch.bfloat16
    assert runtime.pick_runtime("bf16", "cpu").dtype == torch.bfloat16
    assert runtime.pick_runtime("fp32", "cpu").dtype is None


def test_this_machine_picks_what_its_cpu_flags_say():
    """Not simulated: on a CPU without AVX-512 BF16 / AMX (like this project's machines) auto
    must be fp32; with them, bf16."""
    cpuinfo = Path("/proc/cpuinfo")
    if torch.cuda.is_available() or not cpuinfo.is_file():
        pytest.skip("needs a Linux CPU-only machine")
    flags = cpuinfo.read_text()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert runtime.pick_runtime("auto", "cpu").precision == ("bf16" if native else "fp32")


# ------------------------------------------------------------------ device
def test_absent_devices_are_one_line_errors(monkeypatch):
    fake_gpus(monkeypatch, count=1)
    message = one_line_error(lambda: runtime.pick_runtime("auto", "cuda:3"), r"^params.yaml: 'device' is 'cuda:3'")
    assert "only 1 CUDA GPU(s) visible (cuda:0..cuda:0)" in message
    assert runtime.pick_runtime("fp32", "cuda:0").device == torch.device("cuda", 0)
    one_line_error(lambda: runtime.resolve_device("gpu"), r"'device' is 'gpu': not a device; choose one of: auto, cpu")
    no_gpu(monkeypatch)
    one_line_error(lambda: runtime.resolve_device("cuda"), r"'device' is 'cuda': no CUDA GPU visible")
    assert runtime.resolve_device("auto") == torch.device("cpu")


def test_mps_on_a_machine_without_it(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    one_line_error(lambda: runtime.resolve_device("mps"), r"'device' is 'mps': no Apple GPU here")


def test_errors_speak_the_callers_language(monkeypatch):
    no_gpu(monkeypatch)
    cli = one_line_error(lambda: runtime.pick_runtime("auto", "cuda:1", runtime.Setting("cli")), r"^--device cuda:1: ")
    assert "use --device auto" in cli
    api = one_line_error(lambda: runtime.pick_runtime("fp16", "cpu", runtime.Setting("api")), r"^precision='fp16': ")
    assert "pass precision='auto'" in api


def test_params_accept_the_new_choices_and_reject_others():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert parse_params(repo_params({"device": device})).device == device
    assert parse_params(repo_params({"precision": "fp16"})).precision == "fp16"
    with pytest.raises(PipelineError, match=r"'device' is 'gpu'; choose one of: auto, cpu, cuda, cuda:N, mps"):
        parse_params(repo_params({"device": "gpu"}))
    with pytest.raises(PipelineError, match=r"'compile' must be bool"):
        parse_params(repo_params({"compile": "yes"}))


# ------------------------------------------------------------------ fp16 in the epoch loop
class RecordingScaler(torch.amp.GradScaler):
    calls: list = []

    def scale(self, outputs):
        RecordingScaler.calls.append("scale")
        return super().scale(outputs)

    def step(self, optimizer, *args, **kwargs):
        RecordingScaler.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        RecordingScaler.calls.append("update")
        return super().update(new_scale)


def test_fp16_training_steps_through_the_grad_scaler_and_checkpoints_it(monkeypatch, tmp_path):
    """The fp16 path on the CPU (where autocast fp16 runs, slowly): every step goes through
    the scaler, and its state (the loss scale) is in the checkpoint and comes back."""
    RecordingScaler.calls = []
    rt = runtime.Runtime(torch.device("cpu"), torch.float16)
    monkeypatch.setattr(runtime.Runtime, "grad_scaler",
                        lambda self: RecordingScaler("cpu", init_scale=2.0**10, enabled=self.grad_scaling))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (24, 3, 4, 4), dtype=torch.uint8, generator=gen)
    y = (x[:, 0, 0, 0] > 127).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    train = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=8)
    path = tmp_path / "train.pt"
    run = epoch_loop.RunContext(rt, gen, checkpointer=Checkpointer(path, "f", gen))
    epoch_loop.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), train, train,
          Normalizer((0.5,) * 3, (0.5,) * 3), epoch_loop.FitConfig(num_epochs=2, patience=5), run, [])
    assert RecordingScaler.calls == ["scale", "step", "update"] * 6  # 3 steps x 2 epochs
    saved = torch.load(path, weights_only=True)["scaler"]
    assert saved["scale"] > 0 and saved["_growth_tracker"] == 6
    restored = rt.grad_scaler()
    module = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    Checkpointer(path, "f", None).restore(module, optimizer, epoch_loop.make_scheduler(optimizer, 5),
                                          epoch_loop.EarlyStopping(5), restored)
    assert restored.get_scale() == saved["scale"] and restored.state_dict() == saved


def test_fp32_training_has_a_pass_through_scaler():
    rt = runtime.Runtime(torch.device("cpu"), None)
    scaler = rt.grad_scaler()
    loss = torch.tensor(2.0, requires_grad=True)
    assert not scaler.is_enabled() and scaler.scale(loss) is loss and scaler.state_dict() == {}


def test_determinism_reaches_eager_kernels_and_inductor_without_loading_inductor(tmp_path):
    """seed_everything leaves the public getters on, does not import torch._inductor (seconds
    per process), and Inductor imported afterwards (compile: true) starts deterministic."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from folderfit.compute.runtime import seed_everything\n"
        "seed_everything(0)\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
        "assert 'torch._inductor' not in sys.modules\n"
        "import torch._inductor.config as inductor\n"
        "assert inductor.deterministic, 'inductor not deterministic'\n"
        "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_DETERMINISTIC"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
