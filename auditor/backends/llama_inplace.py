"""Scaling a loaded llama.cpp model's layers in memory, so `locate` on a GGUF writes no model copy per count.

The arithmetic is `scale_gguf`'s (weights/gguf_scaling.py): every weight of a quant block is d·q (+ m), so
multiplying the block's fp16 scale d (and min m) by α scales the block exactly up to fp16 rounding; a float
tensor's weights are multiplied directly. What changes is where: in the loaded tensors instead of in a copied
file. Restoring writes back the saved fields bit for bit (x·α/α is not x in floating point).

llama.cpp has no public API for a model's weight tensors. A decode shows them anyway: every node of the graph
passes through the scheduler's eval callback, and a matrix product's first source is its weight tensor, named
as in the file ("blk.12.attn_q.weight"). One short decode with the callback in capture mode finds them all.
The tensors must be in writable memory in the file's own layout, so the model is loaded for this with mmap off
(an mmapped file is read-only) and without the CPU's repacked buffer types (they change the block layout).

Everything is checked before it is used: the ggml_tensor layout (its name field read through our struct must
equal ggml_get_name), the buffer (a plain host or device buffer, not mapped or repacked), every target found,
every type scalable. When anything does not hold, `attach` returns None and the backend falls back to a scaled
copy of the file, as before.
"""

from __future__ import annotations

import ctypes
import re
from contextlib import contextmanager
from typing import Sequence

import numpy as np

from ..weights.gguf_scaling import SCALABLE, gguf_targets, restore_region, scale_region

GGML_MAX_SRC = 10
DEVICE_BUFFERS = ("CUDA", "Metal", "Vulkan", "ROCm")  # a GPU's own buffers: tensor_get/set copy to and from them
_WEIGHT = re.compile(rb"blk\.\d+\.[a-z_]+\.weight")


class GgmlTensor(ctypes.Structure):
    """The head of ggml.h's struct ggml_tensor, up to its name (checked against ggml_get_name before use)."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * GGML_MAX_SRC), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]


def bind(ggml: ctypes.CDLL) -> None:
    """The ggml functions this module calls, typed."""
    ggml.ggml_nbytes.restype = ctypes.c_size_t
    ggml.ggml_nbytes.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_tensor_set.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    ggml.ggml_backend_tensor_set.restype = None
    ggml.ggml_backend_buffer_name.restype = ctypes.c_char_p
    ggml.ggml_backend_buffer_name.argtypes = [ctypes.c_void_p]


class WeightCapture:
    """Collects the weight tensors a decode reads: call `see(node)` from the eval callback's ask phase."""

    def __init__(self, ggml: ctypes.CDLL):
        self.ggml, self.tensors, self.layout_ok = ggml, {}, True

    def see(self, node: int) -> None:
        t = GgmlTensor.from_address(node)
        if t.name != (self.ggml.ggml_get_name(node) or b""):
            self.layout_ok = False  # another ggml_tensor layout: read nothing through it
            return
        for src in t.src:
            if src:
                name = self.ggml.ggml_get_name(src) or b""
                if _WEIGHT.fullmatch(name):
                    self.tensors.setdefault(name.decode(), src)


class InPlaceScaler:
    """Scales and restores chosen tensors of a loaded model through ggml_backend_tensor_get/set."""

    def __init__(self, ggml: ctypes.CDLL, tensors: dict[str, int], info):
        self.ggml, self.tensors, self.info = ggml, tensors, info

    @classmethod
    def attach(cls, ggml: ctypes.CDLL, capture: WeightCapture, info) -> InPlaceScaler | None:
        """The scaler, or None when the capture cannot be trusted or a target cannot be patched in place."""
        if not capture.layout_ok or not capture.tensors:
            return None
        for t in gguf_targets(info, range(info.n_layers or 0)):
            ptr = capture.tensors.get(t.name)
            if ptr is None or t.type not in SCALABLE:
                return None
            view = GgmlTensor.from_address(ptr)
            buffer = (ggml.ggml_backend_buffer_name(view.buffer) or b"").decode() if view.buffer else ""
            plain = buffer == "CPU" or buffer.startswith(DEVICE_BUFFERS)
            if int(ggml.ggml_nbytes(ptr)) != t.n_bytes or view.type != int(t.type) or not plain:
                return None  # another layout than the file's (repacked, mapped read-only, split)
        return cls(ggml, capture.tensors, info)

    def _get(self, ptr: int, n: int) -> np.ndarray:
        buf = np.empty(n, dtype=np.uint8)
        self.ggml.ggml_backend_tensor_get(ptr, buf.ctypes.data, 0, n)
        return buf

    @contextmanager
    def scaled(self, layers: Sequence[int], alpha: float, scale_o_proj: bool = True):
        """The chosen layers scaled by alpha for the duration; restored bit for bit afterwards, even on error."""
        done = []
        try:
            for t in gguf_targets(self.info, layers, scale_o_proj):
                ptr = self.tensors[t.name]
                buf = self._get(ptr, t.n_bytes)
                saved = scale_region(buf, t.type, alpha)
                self.ggml.ggml_backend_tensor_set(ptr, buf.ctypes.data, 0, t.n_bytes)
                done.append((t, ptr, saved))
            yield
        finally:
            for t, ptr, saved in reversed(done):
                buf = self._get(ptr, t.n_bytes)
                restore_region(buf, t.type, saved)
                self.ggml.ggml_backend_tensor_set(ptr, buf.ctypes.data, 0, t.n_bytes)
