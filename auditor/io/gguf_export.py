"""Write a trained model back as a GGUF with the input GGUF's metadata and tensor names (F16 or Q8_0),
so `scan` and `locate` on the llama.cpp backend can read what `harden` produced.

Uses gguf-py: GGUFReader for the source's metadata, its HF→GGUF tensor-name map, GGUFWriter and its
Q8_0 quantizer. Llama-family q/k weights are stored permuted in GGUF (llama.cpp's rotary layout);
transformers un-permutes them on load, so they are permuted back here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import AuditError
from .files import atomic_write, check_writable

PERMUTE_QK = {"llama"}  # architectures whose converter permutes attn_q / attn_k
_GGUF_TYPES = {"f16": "F16", "q8_0": "Q8_0"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def export_gguf(src_gguf: str | os.PathLike, state_dict: dict, dst: str | os.PathLike, qtype: str = "f16",
                force: bool = False) -> Path:
    import gguf

    if qtype not in _GGUF_TYPES:
        raise AuditError(f"unknown GGUF type '{qtype}' (choose f16 or q8_0)")
    dst = check_writable(dst, force)  # before the slow part
    reader = gguf.GGUFReader(str(src_gguf))
    arch = str(reader.fields["general.architecture"].contents())
    arch_enum = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_enum is None:
        raise AuditError(f"gguf-py has no tensor-name map for architecture '{arch}'", src_gguf)
    n_blocks = int(reader.fields[f"{arch}.block_count"].contents())
    n_head = int(reader.fields[f"{arch}.attention.head_count"].contents())
    kv_field = reader.fields.get(f"{arch}.attention.head_count_kv")
    n_head_kv = int(kv_field.contents()) if kv_field else n_head
    names = gguf.get_tensor_name_map(arch_enum, n_blocks)
    by_gguf = {}
    for hf_name, t in state_dict.items():
        g = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if g is not None:
            by_gguf[g] = t.detach().float().cpu().numpy()
    target = getattr(gguf.GGMLQuantizationType, _GGUF_TYPES[qtype])

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(str(tmp), arch)
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture":
                continue
            if key == "general.file_type":
                w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16 if qtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0))
                continue
            sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
        for t in reader.tensors:
            if t.name not in by_gguf:
                raise AuditError(f"the trained model has no tensor for '{t.name}'", src_gguf)
            data = by_gguf[t.name]
            if arch in PERMUTE_QK and t.name.endswith("attn_q.weight"):
                data = _permute(data, n_head)
            elif arch in PERMUTE_QK and t.name.endswith("attn_k.weight"):
                data = _permute(data, n_head_kv)
            if data.ndim == 1 or data.shape[-1] % 32:  # norms and odd shapes stay F32
                w.add_tensor(t.name, data.astype(np.float32))
            elif qtype == "f16":
                w.add_tensor(t.name, data.astype(np.float16))
            else:
                q = gguf.quants.quantize(data.astype(np.float32), target)
                w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=target)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    return atomic_write(dst, write, force)
