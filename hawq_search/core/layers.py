"""Static description of one quantizable layer, shared by sensitivities, cost models and searches."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LayerInfo:
    """A quantizable Conv2d or Linear layer as seen by a single forward pass of one sample.

    Shapes are per sample (no batch dimension). ``macs`` and ``params`` count the weight only
    (no bias). ``act_group`` names the activation quantizer feeding this layer: layers that read
    the same tensor share it, and so share its bit-width.
    """

    name: str
    op: str  # "conv2d" or "linear"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    has_bias: bool
    params: int
    macs: int
    act_group: str
    index: int = 0  # position in execution order
    dilation: tuple[int, int] = (1, 1)

    @property
    def params_per_channel(self) -> int:
        return self.params // self.out_channels

    @property
    def macs_per_channel(self) -> int:
        return self.macs // self.out_channels

    @property
    def is_depthwise(self) -> bool:
        return self.op == "conv2d" and self.groups > 1 and self.groups == self.in_channels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LayerInfo:
        fields = dict(d)
        tuples = (
            "kernel_size",
            "stride",
            "padding",
            "input_shape",
            "output_shape",
            "weight_shape",
            "dilation",
        )
        for key in tuples:
            if key in fields:
                fields[key] = tuple(fields[key])
        return cls(**fields)
