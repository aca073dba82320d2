"""--device / --dtype / --device-map on the torch backend: checked before any load, auto choices follow the
machine (detected, not assumed), bf16 states agree with fp32 and the statistics stay fp32."""

import pytest
import torch
from click.testing import CliRunner

from auditor.backends.devices import resolve_device, resolve_dtype
from auditor.errors import AuditError
from auditor.backends.hf import TorchBackend
from auditor.cli import main
from auditor.io.models import resolve_model

QUERIES = ["Give three tips for staying healthy.", "How do I pick a lock?", "Name a river.", "hi"]


def test_auto_dtype_follows_the_cpu_and_the_device():
    assert resolve_dtype("auto", "cpu", {"avx2", "fma"}, "AVX2") is torch.float32  # AVX2 only: bf16 would be emulated
    assert resolve_dtype("auto", "cpu", {"avx2", "amx_bf16"}, "AVX512") is torch.bfloat16
    assert resolve_dtype("auto", "cpu", {"avx512_bf16"}, "AVX512") is torch.bfloat16
    assert resolve_dtype("auto", "cpu", {"avx512_bf16"}, "AVX2") is torch.bfloat16  # no AMX: bf16 attention works capped
    assert resolve_dtype("auto", "cuda:0", set()) is torch.bfloat16
    assert resolve_dtype("float16", "cpu", set()) is torch.float16
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_half_precision_on_an_amx_cpu_with_capped_kernels_is_float32_or_a_one_line_error():
    """ATEN_CPU_CAPABILITY=avx2 (reproducible builds) on an AMX CPU: torch's bf16 attention fails there mid-run."""
    amx = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert resolve_dtype("auto", "cpu", amx, "AVX2") is torch.float32
    assert resolve_dtype("float32", "cpu", amx, "AVX2") is torch.float32
    with pytest.raises(AuditError, match=r"--dtype bfloat16: torch's CPU kernels are capped at AVX2 .*--dtype float32"):
        resolve_dtype("bfloat16", "cpu", amx, "AVX2")
    assert resolve_dtype("bfloat16", "cpu", amx, "AVX512") is torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without CUDA gives")
def test_asking_for_cuda_without_it_is_one_line_before_any_load(tiny_model_dir, monkeypatch):
    from auditor.backends import hf

    monkeypatch.setattr(hf, "load_causal_lm", lambda *a, **k: pytest.fail("loaded before checking"))
    for args, msg in ((["--device", "cuda"], "CPU build" if torch.version.cuda is None else "CUDA device"),
                      (["--device", "tpu"], "unknown device 'tpu'"),
                      (["--device", "cuda:x"], "unknown device")):
        r = CliRunner().invoke(main, ["scan", str(tiny_model_dir), *args])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(main, ["scan", "--dtype", "bfloat16", "--backend", "llama"])
    assert r.exit_code == 2 and "for the torch backend" in r.output
    r = CliRunner().invoke(main, ["scan", "--dtype", "int4"])
    assert r.exit_code == 2 and "'int4' is not one of" in r.output


def test_bfloat16_states_agree_with_float32(tiny_model_dir):
    ref = resolve_model(str(tiny_model_dir))
    f32 = TorchBackend(ref, dtype="float32", device="cpu")
    b16 = TorchBackend(ref, dtype="bfloat16", device="cpu")
    assert f32.dtype is torch.float32 and b16.dtype is torch.bfloat16
    a, b = f32.final_token_states(QUERIES, "alpaca"), b16.final_token_states(QUERIES, "alpaca")
    assert a.dtype is b.dtype is torch.float32  # statistics are accumulated in fp32 whatever the model runs in
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cos.min() > 0.99, cos.min()
    assert len(b16.generate(QUERIES, "alpaca", 3)) == len(QUERIES)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_states_equal_cpu_states(tiny_model_dir):
    ref = resolve_model(str(tiny_model_dir))
    cpu = TorchBackend(ref, device="cpu", dtype="float32").final_token_states(QUERIES, "alpaca")
    gpu = TorchBackend(ref, device="cuda", dtype="float32").final_token_states(QUERIES, "alpaca")
    assert gpu.device.type == "cpu" and torch.allclose(cpu, gpu, atol=1e-4)
