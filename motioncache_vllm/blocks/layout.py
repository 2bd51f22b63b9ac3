"""Spatial blocks of one chunk: which tokens belong to which cache block.

A chunk holds ``F`` latent frames of ``H x W`` tokens. A spatial block is a
``tile x tile`` square of token positions taken through all ``F`` frames of the chunk
(the temporal majority vote makes that the natural unit; ``tile = 1`` is the paper's
per-token granularity)::

    tile = 2, H = W = 4            block ids          tokens of block 1 (F = 2)
    x ->  0 1 2 3                  0 0 1 1             f0: (0,2) (0,3) (1,2) (1,3)
    y 0   . . . .                  0 0 1 1             f1: (0,2) (0,3) (1,2) (1,3)
      1   . . . .                  2 2 3 3
      2   . . . .                  2 2 3 3
      3   . . . .

Tokens are flattened frame-major (``f * H * W + y * W + x``), as the patch embedding
emits them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class ChunkLayout:
    frames: int
    height: int  # tokens
    width: int  # tokens
    tile: int = 1

    def __post_init__(self) -> None:
        if min(self.frames, self.height, self.width, self.tile) < 1:
            raise ValueError(f"invalid chunk layout {self}")

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def num_tokens(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def blocks_per_row(self) -> int:
        return -(-self.width // self.tile)

    @property
    def num_blocks(self) -> int:
        return -(-self.height // self.tile) * self.blocks_per_row

    @cached_property
    def block_of_position(self) -> torch.Tensor:
        """(H*W,) spatial block id of each token position."""
        y = torch.arange(self.height).repeat_interleave(self.width) // self.tile
        x = torch.arange(self.width).repeat(self.height) // self.tile
        return y * self.blocks_per_row + x

    @cached_property
    def block_of_token(self) -> torch.Tensor:
        """(F*H*W,) spatial block id of each token of the chunk."""
        return self.block_of_position.repeat(self.frames)

    @cached_property
    def block_sizes(self) -> torch.Tensor:
        """Tokens per block (edge blocks may be smaller when ``tile`` does not divide the grid)."""
        return torch.bincount(self.block_of_token, minlength=self.num_blocks)

    def tokens_of(self, block_mask: torch.Tensor) -> torch.Tensor:
        """Sorted token indices covered by the blocks where ``block_mask`` is true."""
        return torch.nonzero(block_mask[self.block_of_token], as_tuple=False).flatten()

    def block_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of each block's tokens: (F*H*W,) values -> (num_blocks,) float32."""
        sums = torch.zeros(self.num_blocks, dtype=torch.float32)
        sums.index_add_(0, self.block_of_token, values.float())
        return sums / self.block_sizes

    def block_fraction(self, token_flags: torch.Tensor) -> torch.Tensor:
        """Fraction of each block's tokens whose flag is set: (F*H*W,) bool -> (num_blocks,)."""
        return self.block_mean(token_flags)
