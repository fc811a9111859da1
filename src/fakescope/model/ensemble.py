"""Several trained detectors scored as one: each member votes with its logit centred on its
own calibrated threshold, and the ensemble's logit is the highest vote (fusion "max") or the
mean vote ("mean").

Why a maximum of centred logits: members are experts on different kinds of fake (a network
trained on whole synthesised faces, one trained on pasted and blended faces; docs/results.md
§8). An expert out of its depth mostly says "real" (its logit sits below its threshold), so the
highest centred vote is the expert that recognises what it sees, and the ensemble says "fake"
at logit 0 exactly when some member would at its own threshold. Averaging instead lets an
expert that is inverted on the other kind (AUC 0.41 there) pull the right one down.

The mean is for members that are the same kind of detector (one recipe trained with several
seeds): their errors are partly independent, and averaging them is the plain variance
reduction of a seed ensemble. The mean of centred logits ranks images as the mean logit does.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import FUSIONS


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module], offsets: list[float], fusion: str = "max"):
        super().__init__()
        if len(members) != len(offsets) or len(members) < 2:
            raise ValueError("an ensemble needs two or more members, one offset each")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {fusion!r}")
        self.fusion = fusion
        self.members = nn.ModuleList(members)
        # the logit of each member's stored threshold (a buffer: saved with the weights)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float32))
        self.input_size = members[0].input_size

    def forward(self, x):
        """The fake logit, shape (N, 1): the highest (or mean) member logit minus that member's
        offset."""
        # float32 for the comparison: under bf16 autocast the offsets would lose digits
        z = torch.cat([m(x).float() for m in self.members], dim=1) - self.offsets
        if self.fusion == "mean":
            return z.mean(dim=1, keepdim=True)
        return z.amax(dim=1, keepdim=True)

    @property
    def target_layers(self) -> list[nn.Module]:
        """Every member's last stage: Grad-CAM gets gradients only through the winning member,
        so the map is that member's."""
        return [m.target_layer for m in self.members]
