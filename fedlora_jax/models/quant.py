"""Weight-only quantization of the frozen base projections (QLoRA's storage, not its arithmetic).

A projection weight W [..., out, in] is split along `in` into blocks of `block_size` columns
(per-channel when `block_size` is 0: one block per row) and stored as integer codes plus one
scale per block, `scale` [..., out, in / block]:

  int8  codes int8 in [-127, 127],  W ~ code * scale,  scale = absmax / 127
  int4  codes in [-7, 7], two a byte (uint8, code + 8, the even column in the high nibble),
        W ~ code * scale, scale = absmax / 7
  nf4   QLoRA's NormalFloat codebook (16 values in [-1, 1]), indices two a byte as above,
        W ~ NF4[index] * scale, scale = absmax; bit-identical to bitsandbytes'
        `quantize_4bit(..., quant_type="nf4")` whenever `in` is a multiple of the block size

The model holds a `QuantizedWeight` as the value of the projection's `nnx.Param`; the matmul
dequantizes it to the compute dtype (`dequantize`), so only storage changes: a model over the
quantized weights equals, to float rounding, the same model over `dequantize(quantize(W))`.
`QuantizedWeight` is a pytree (codes and scale are its leaves, the format is static), so it
flows through `nnx.split`, `jax.vmap` (shared by clients), the layer scan and shardings like any
array.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

KINDS = ("none", "int8", "int4", "nf4")
SCALE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BITS = {"int8": 8, "int4": 4, "nf4": 4}
_QMAX = {"int8": 127, "int4": 7}
# QLoRA's NF4 codebook (Dettmers et al. 2023, appendix E), as bitsandbytes and qwix hold it.
NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)
_NF4_MIDPOINTS = (NF4_CODE[:-1] + NF4_CODE[1:]) / 2  # float32, as bitsandbytes computes them


@struct.dataclass
class QuantizedWeight:
  """A quantized weight of logical shape [..., out, in].

  Attributes:
    codes: int8 [..., out, in] (int8), or uint8 [..., out, in / 2] (int4, nf4: two codes a byte).
    scale: [..., out, in / block] float32 or bfloat16, one per block of `in`.
    kind: "int8" | "int4" | "nf4".
    dtype: the dtype of the weight it stands for (its `nnx.Param`'s dtype).
  """

  codes: Any
  scale: Any
  kind: str = struct.field(pytree_node=False)
  dtype: Any = struct.field(pytree_node=False)

  @property
  def shape(self) -> tuple[int, ...]:
    """The logical shape [..., out, in] of the weight."""
    lead, cols = tuple(self.codes.shape[:-1]), self.codes.shape[-1]
    return lead + (cols * 2 if BITS[self.kind] == 4 else cols,)

  @property
  def ndim(self) -> int:
    return len(self.codes.shape)

  @property
  def block_size(self) -> int:
    return self.shape[-1] // self.scale.shape[-1]

  @property
  def nbytes(self) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
               for x in (self.codes, self.scale))


@dataclasses.dataclass(frozen=True)
class QuantFormat:
  """How a projection weight is stored: `kind` ("int8" | "int4" | "nf4"), blocks of
  `block_size` input columns (0: per output channel), scales in `scale_dtype`."""

  kind: str
  block_size: int = 64
  scale_dtype: str = "float32"

  def __post_init__(self):
    check_format(self.kind, self.block_size, self.scale_dtype)
    if self.kind == "none":
      raise ValueError("a QuantFormat needs a kind other than 'none'")

  def quantize(self, w: jax.Array) -> "QuantizedWeight":
    return _quantize_jit(w, self.kind, self.block_size, self.scale_dtype)


PER_CHANNEL_AXIS = "per_channel"  # logical name of a per-channel scale's size-1 input axis


def logical_axes(fmt: QuantFormat, dtype_name: str, axes: tuple[str, ...]) -> QuantizedWeight:
  """The logical axis names of a quantized weight's leaves, shaped like the weight (a pytree
  node with the same static fields): codes and blockwise scales take the weight's names, the
  size-1 input axis of a per-channel scale `PER_CHANNEL_AXIS`."""
  scale_axes = axes if fmt.block_size else axes[:-1] + (PER_CHANNEL_AXIS,)
  return QuantizedWeight(codes=axes, scale=scale_axes, kind=fmt.kind,
                         dtype=jnp.dtype(dtype_name))


def check_format(kind: str, block_size: int, scale_dtype: str) -> None:
  """Raises ValueError naming the bad field of a quantization format."""
  if kind not in KINDS:
    raise ValueError(f"model.quantize must be one of {KINDS}, got {kind!r}")
  if block_size < 0 or block_size % 2:
    raise ValueError(f"model.quant_block_size must be 0 (per channel) or an even positive "
                     f"number, got {block_size}")
  if scale_dtype not in SCALE_DTYPES:
    raise ValueError(f"model.quant_scale_dtype must be one of {sorted(SCALE_DTYPES)}, "
                     f"got {scale_dtype!r}")


def _blocks(w: jax.Array, block_size: int) -> jax.Array:
  """[..., out, in] -> [..., out, in / block, block] (block = in when block_size is 0)."""
  cols = w.shape[-1]
  block = block_size or cols
  if cols % block or cols % 2:
    raise ValueError(f"a weight of shape {tuple(w.shape)} cannot be quantized in blocks of "
                     f"{block} columns (its input size must be an even multiple of the block)")
  return w.reshape(w.shape[:-1] + (cols // block, block))


def _pack(nibbles: jax.Array) -> jax.Array:
  """uint8 [..., 2n] of values < 16 -> uint8 [..., n], element 2j in the high nibble."""
  return (nibbles[..., 0::2] << 4) | nibbles[..., 1::2]


def _unpack(packed: jax.Array) -> jax.Array:
  """uint8 [..., n] -> uint8 [..., 2n] (inverse of `_pack`)."""
  both = jnp.stack([packed >> 4, packed & 0xF], axis=-1)
  return both.reshape(packed.shape[:-1] + (2 * packed.shape[-1],))


def quantize(w: jax.Array, kind: str, block_size: int = 64,
             scale_dtype: str = "float32") -> QuantizedWeight:
  """Quantizes w [..., out, in] blockwise along `in` (see the module docstring)."""
  check_format(kind, block_size, scale_dtype)
  if kind == "none":
    raise ValueError("quantize() needs a kind other than 'none'")
  sdt = SCALE_DTYPES[scale_dtype]
  w_nkb = _blocks(jnp.asarray(w).astype(jnp.float32), block_size)
  absmax_nk = jnp.max(jnp.abs(w_nkb), axis=-1)
  if kind == "nf4":
    # As bitsandbytes: multiply by the reciprocal of the float32 absmax, clamp, and take the
    # codebook entry whose bucket (bounded by midpoints, right-inclusive) holds the value.
    scale_nk = absmax_nk.astype(sdt)
    # An all-zero block codes as 0 (bitsandbytes clamps absmax to 1e-38, which XLA would flush).
    s_nk = scale_nk.astype(jnp.float32)
    inv_nk = jnp.where(s_nk > 0, 1.0 / jnp.where(s_nk > 0, s_nk, 1.0), 0.0)
    x_nkb = jnp.clip(w_nkb * inv_nk[..., None], -1.0, 1.0)
    idx = jnp.searchsorted(jnp.asarray(_NF4_MIDPOINTS), x_nkb, side="left",
                           method="compare_all").astype(jnp.uint8)
    codes = _pack(idx.reshape(w.shape))
  else:
    qmax = _QMAX[kind]
    scale_nk = (absmax_nk / qmax).astype(sdt)
    denom = jnp.where(scale_nk == 0, 1.0, scale_nk.astype(jnp.float32))
    q = jnp.clip(jnp.round(w_nkb / denom[..., None]), -qmax, qmax).reshape(w.shape)
    codes = q.astype(jnp.int8) if kind == "int8" else _pack((q + 8).astype(jnp.uint8))
  return QuantizedWeight(codes=codes, scale=scale_nk, kind=kind, dtype=jnp.dtype(w.dtype))


_quantize_jit = jax.jit(quantize, static_argnums=(1, 2, 3))


def dequantize(q: QuantizedWeight, dtype: Any = None) -> jax.Array:
  """The weight [..., out, in] that `q` stands for, computed in float32, returned in `dtype`
  (default: the quantized weight's own dtype)."""
  if q.kind == "int8":
    values = q.codes.astype(jnp.float32)
  elif q.kind == "int4":
    values = _unpack(q.codes).astype(jnp.float32) - 8.0
  else:
    values = jnp.asarray(NF4_CODE)[_unpack(q.codes)]
  blocks = q.scale.shape[-1]
  v_nkb = values.reshape(values.shape[:-1] + (blocks, -1))
  w = v_nkb * q.scale.astype(jnp.float32)[..., None]
  return w.reshape(q.shape).astype(dtype or q.dtype)


def dequantize_tree(tree: Any) -> Any:
  """`tree` with every `QuantizedWeight` replaced by its dequantized weight (its own dtype)."""
  return jax.tree.map(lambda x: dequantize(x) if isinstance(x, QuantizedWeight) else x, tree,
                      is_leaf=lambda x: isinstance(x, QuantizedWeight))


def is_quantized(tree: Any) -> bool:
  """Whether `tree` holds any `QuantizedWeight`."""
  return any(isinstance(x, QuantizedWeight)
             for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, QuantizedWeight)))
