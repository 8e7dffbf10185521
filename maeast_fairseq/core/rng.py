"""Counter-based, per-clip deterministic randomness for masking.

Masks must be a function of ``(seed, epoch, clip id)`` only — never of the history of a global RNG — so
that a clip gets the same mask whatever batch it lands in, whatever the number of data-loader workers or
GPUs, and after a restart.  :class:`MaskRNG` therefore holds one 63-bit *key* per batch row and a *stream
counter*; every random value is a pure integer hash of ``(key, stream, element multi-index)`` computed with
vectorised int64 torch ops (intermediate values are kept in 32 bits, so there is no reliance on signed
overflow), on the device of the keys.  Each draw advances the stream, so successive draws are independent.

Element indices are hashed *per dimension* (a value depends on its multi-index, not on its flat offset),
so a value drawn with shape ``(n_time, n_freq)`` at ``(t, f)`` does not change when ``n_time`` changes:
masks of clips padded to different batch lengths stay the same where that matters.

Pure torch; no global RNG state is read or written (except by :meth:`MaskRNG.from_generator`, which draws
the keys from the generator it is given, or from the global CPU generator when given None).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

__all__ = ["MaskRNG", "hash32"]

_M32 = 0xFFFFFFFF
# distinct salts so that keys / streams / dimensions / clone indices can never alias one another
_SALT_SEED = 0x243F6A88
_SALT_EPOCH = 0x85A308D3
_SALT_ID_LO = 0x13198A2E
_SALT_ID_HI = 0x03707344
_SALT_KEY_HI = 0xA4093822
_SALT_STREAM = 0x299F31D0
_SALT_CLONE = 0x082EFA98
_SALT_FOLD = 0xEC4E6C89
_SALT_DIMS = (0x452821E6, 0x38D01377, 0xBE5466CF, 0x34E90C6C, 0xC0AC29B7, 0xC97C50DD, 0x3F84D5B5, 0xB5470917)


def _mul32(x, c: int):
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow (16-bit split of ``c``).

    Works on int64 tensors and on python ints (same values), like the other helpers below.
    """
    c_lo = c & 0xFFFF
    c_hi = (c >> 16) & 0xFFFF
    return (x * c_lo + (((x * c_hi) & 0xFFFF) << 16)) & _M32


def _mix32(x):
    """A strong 32-bit integer finaliser (xor-shift / multiply, 'lowbias32' constants); bijective on 2**32."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def _absorb(h, v):
    """Absorb the 32-bit value ``v`` into the 32-bit state ``h`` (bijective in ``v`` for fixed ``h``)."""
    return _mix32(h ^ _mix32(v))


def hash32(*values: Union[int, torch.Tensor]) -> torch.Tensor:
    """Hash a sequence of 32-bit values (python ints or broadcastable int64 tensors) into ``[0, 2**32)``.

    Only the low 32 bits of each value are used.  The result lives on the device of the first tensor argument.
    """
    device = next((v.device for v in values if torch.is_tensor(v)), torch.device("cpu"))
    h = torch.tensor(0x6A09E667, dtype=torch.long, device=device)
    for i, v in enumerate(values):
        v = torch.as_tensor(v, dtype=torch.long).to(device)
        h = _absorb(h, (v & _M32) ^ _SALT_DIMS[i % len(_SALT_DIMS)])
    return h


def _split64(x: torch.Tensor):
    return x & _M32, (x >> 32) & _M32


def _join_key(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    # 63-bit non-negative key
    return ((hi & 0x7FFFFFFF) << 32) | (lo & _M32)


class MaskRNG:
    """Per-row counter-based random number generator.

    Attributes:
        keys: ``LongTensor (B,)``, one non-negative 63-bit key per row (on the masking device).
        stream: python int, advanced by every draw.

    Row ``b`` of every draw depends only on ``keys[b]``, ``stream`` and the element index, so a row's values
    do not depend on the other rows of the batch.
    """

    def __init__(self, keys: torch.Tensor, stream: int = 0):
        if keys.dim() != 1:
            raise ValueError(f"keys must be 1-D (B,), got shape {tuple(keys.shape)}")
        self.keys = keys.to(torch.long)
        self.stream = int(stream)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_ids(cls, seed: int, epoch: int, ids: torch.Tensor) -> MaskRNG:
        """Keys = hash(seed, epoch, id) for each clip id (``ids``: LongTensor (B,), any device)."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() == 0:
            ids = ids.view(1)
        seed = int(seed)
        epoch = int(epoch)
        id_lo, id_hi = _split64(ids)
        h = _absorb(seed & _M32, _SALT_SEED)  # python ints: no device tensors for the scalar part
        h = _absorb(h, ((seed >> 32) & _M32) ^ _SALT_SEED)
        h = _absorb(h, (epoch & _M32) ^ _SALT_EPOCH)
        h = _absorb(h, ((epoch >> 32) & _M32) ^ _SALT_EPOCH)
        h = _absorb(torch.full_like(id_lo, h), id_lo ^ _SALT_ID_LO)
        h = _absorb(h, id_hi ^ _SALT_ID_HI)
        lo = h
        hi = _absorb(h, torch.full_like(h, _SALT_KEY_HI))
        return cls(_join_key(lo, hi), 0)

    @classmethod
    def from_generator(
        cls, generator: Optional[torch.Generator], batch: int, device=None
    ) -> MaskRNG:
        """Random keys drawn once from ``generator`` (or the global CPU RNG when None); for ad-hoc use/tests."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        keys = torch.randint(0, 2**62, (batch,), generator=generator, dtype=torch.long, device=gen_device)
        return cls(keys.to(device if device is not None else gen_device), 0)

    # ------------------------------------------------------------------ properties / helpers
    @property
    def batch(self) -> int:
        return self.keys.numel()

    def __len__(self) -> int:
        return self.batch

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def to(self, device) -> MaskRNG:
        return MaskRNG(self.keys.to(device), self.stream)

    def __repr__(self) -> str:
        return f"MaskRNG(batch={self.batch}, stream={self.stream}, device={self.device})"

    def _next_stream(self) -> int:
        s = self.stream
        self.stream += 1
        return s

    def _row_state(self, stream: int) -> torch.Tensor:
        lo, hi = _split64(self.keys)
        h = _absorb(lo, hi ^ _SALT_KEY_HI)
        return _absorb(h, (stream & _M32) ^ _SALT_STREAM)  # (B,)

    # ------------------------------------------------------------------ draws
    def bits(self, *shape: int) -> torch.Tensor:
        """Uniform 32-bit integers in ``[0, 2**32)`` as ``LongTensor (B, *shape)``; advances the stream."""
        shape = tuple(int(s) for s in shape)
        h = self._row_state(self._next_stream())
        nd = len(shape)
        h = h.view((-1,) + (1,) * nd)
        for d, n in enumerate(shape):
            idx = torch.arange(n, dtype=torch.long, device=self.device)
            view = [1] * (nd + 1)
            view[d + 1] = n
            m = _mix32(idx ^ _SALT_DIMS[d % len(_SALT_DIMS)]).view(view)
            h = _mix32(h ^ m)
        if nd == 0:
            h = _mix32(h ^ _SALT_DIMS[0])
        return h.expand((self.batch,) + shape) if nd else h

    def uniform(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform floats in ``[0, 1)`` of shape ``(B, *shape)`` (24 random bits for float32/half, 32 for float64)."""
        b = self.bits(*shape)
        if dtype == torch.float64:
            return b.to(torch.float64) * (1.0 / 2**32)
        return ((b >> 8).to(torch.float32) * (1.0 / 2**24)).to(dtype)

    def randint(self, high: Union[int, torch.Tensor], *shape: int) -> torch.Tensor:
        """Integers uniform in ``[0, high)`` of shape ``(B, *shape)``.

        ``high`` is an int or a LongTensor ``(B,)`` (one bound per row), ``1 <= high <= 2**31``.
        Uses the multiply-shift map ``(bits * high) >> 32`` (bias < high / 2**32).
        """
        b = self.bits(*shape)
        if torch.is_tensor(high):
            high = high.to(device=self.device, dtype=torch.long).view((-1,) + (1,) * len(shape))
        return (b * high) >> 32

    def clones(self, n: int) -> MaskRNG:
        """A MaskRNG with ``B * n`` rows; row ``b * n + c`` is keyed by hash(key_b, stream, c).

        Advances this generator's stream (two calls give different clone sets).
        """
        n = int(n)
        s = self._next_stream()
        lo, hi = _split64(self.keys)
        h = _absorb(lo, hi ^ _SALT_KEY_HI)
        h = _absorb(h, (s & _M32) ^ _SALT_CLONE)
        c = torch.arange(n, dtype=torch.long, device=self.device)
        h = _absorb(h[:, None], (c ^ _SALT_CLONE)[None, :]).reshape(-1)  # (B*n,), row-major = b*n + c
        new_lo = h
        new_hi = _absorb(h, torch.full_like(h, _SALT_KEY_HI))
        return MaskRNG(_join_key(new_lo, new_hi), 0)

    def select(self, rows: Union[torch.Tensor, Sequence[int], slice]) -> MaskRNG:
        """Rows subset, sharing the current stream position (values of kept rows are unchanged)."""
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        return MaskRNG(self.keys[rows].reshape(-1), self.stream)

    def fold(self) -> MaskRNG:
        """A 1-row MaskRNG whose key is a hash of the multiset of this batch's keys (order-independent).

        Used for 'one mask for the whole batch'.  It starts at this generator's current stream; callers that
        draw from it should then set ``self.stream = folded.stream`` (done by the masking functions).
        """
        lo, hi = _split64(self.keys)
        per_row = _absorb(lo, hi ^ _SALT_FOLD)
        total = per_row.sum() & _M32  # order-independent; sum of < 2**32 values fits int64 for any batch
        h = _absorb(total.view(1), (self.batch & _M32) ^ _SALT_FOLD)
        return MaskRNG(_join_key(h, _absorb(h, torch.full_like(h, _SALT_KEY_HI))), self.stream)
