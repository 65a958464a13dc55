"""MAUGen (paper sections 3.2-3.3) as a batched pipeline loading the official release's layout.

- ``checkpoint``: the release's file layout, shape inference, strict loading
- ``loading``: one loader per part of the release (base folder, UNet, identity encoder)
- ``unet``: the SD-inpainting UNet with the label branch on its up path
- ``label_decoder``: Conditional Label Decoder (IDM, AU decoder with LGFE, dual head)
- ``identity_encoder``: 112x112 identity ViT, identity-to-token MLPs
- ``chips``: the aligned 112x112 identity face chip (dlib; no torch)
- ``pipeline``: the denoising loop producing images and labels together
- ``stage``: ``MaugenGenerator``, registered as ``"maugen"``

The network modules import torch at module level; the stage imports them in ``setup()``.
"""

__all__: list[str] = []
