"""A codec plug-in: scaled sign compression with error feedback (Karimireddy, Rebjock, Stich,
Jaggi, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML 2019):
C(v) = (||v||_1 / P) sign(v), sign(0) sent as +.

A message is the scale w_i ||v||_1 / P (one model-dtype word) and one bit per coordinate: exactly
element size + ceil(P / 8) bytes. Per-client scales do not sum, so the messages travel by
all_gather; C is biased, so a client keeps e <- u - C(u) (declared `error_feedback=True`).

    PYTHONPATH=examples python -m pfl_dist.train comm.codec=custom_codec:ScaledSign
"""

from __future__ import annotations

import math

import torch

from pfl_dist.exchange.base import GatherCompressor
from pfl_dist.exchange.codecs import bytes_as, pack_bits, unpack_bits
from pfl_dist.exchange.spec import CodecInfo


class ScaledSign(GatherCompressor):
    codec = CodecInfo(transport="all_gather", error_feedback=True)

    def message_bytes(self) -> int:
        return self.element_size + math.ceil(self.num_params / 8)

    def encode(self, vectors: torch.Tensor, *, round_idx: int, clients: torch.Tensor,
               weights: torch.Tensor | None = None, control: torch.Tensor | None = None) -> torch.Tensor:
        v = vectors.detach().cpu()
        w = torch.ones(len(v), dtype=torch.float64) if weights is None else weights.detach().double().cpu()
        scales = (v.double().abs().mean(dim=1) * w).to(self.dtype)
        signs = pack_bits((v >= 0).to(torch.int32), bits=1)
        return torch.cat([scales.view(torch.uint8).view(len(v), self.element_size), signs], dim=1).to(self.device)

    def decode(self, messages: torch.Tensor, *, round_idx: int, control: torch.Tensor | None = None) -> torch.Tensor:
        messages = messages.cpu()
        scales = bytes_as(messages[:, : self.element_size], self.dtype).double()
        signs = unpack_bits(messages[:, self.element_size:], bits=1, count=self.num_params)
        return ((2 * signs.double() - 1) * scales).to(self.device)

    def residual(self, corrected: torch.Tensor, *, round_idx: int, messages: torch.Tensor | None = None
                 ) -> torch.Tensor:
        scale = corrected.double().abs().mean(dim=1, keepdim=True).to(self.dtype).double()  # as sent
        sent = torch.where(corrected >= 0, scale, -scale)
        return (corrected.double() - sent).to(corrected.dtype)
