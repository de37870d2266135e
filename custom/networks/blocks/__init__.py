"""Reusable TAT building blocks, one concept per module."""

from __future__ import annotations

from custom.networks.blocks.attention import ChannelAttention, channel_attention
from custom.networks.blocks.dynamic_conv import DepthwiseConv
from custom.networks.blocks.feed_forward import GatedFeedForward, ffn_hidden_channels
from custom.networks.blocks.layer_norm import ChannelLayerNorm
from custom.networks.blocks.local_windows import window_starts
from custom.networks.blocks.sampling import Downsample, Upsample
from custom.networks.blocks.task_kernels import TaskKernels, TaskRepresentationNetwork
from custom.networks.blocks.transformer_block import TransformerBlock

__all__ = [
    "ChannelAttention",
    "ChannelLayerNorm",
    "DepthwiseConv",
    "Downsample",
    "GatedFeedForward",
    "TaskKernels",
    "TaskRepresentationNetwork",
    "TransformerBlock",
    "Upsample",
    "channel_attention",
    "ffn_hidden_channels",
    "window_starts",
]
