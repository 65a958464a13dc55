"""MAUGen (paper sections 3.2-3.3) as a batched pipeline loading the official release's layout.

- ``checkpoint``: the release's file layout, shape inference, strict loading
- ``unet``: the SD-inpainting UNet with the label branch on its up path
- ``label_decoder``: Conditional Label Decoder (IDM, AU decoder with LGFE, dual head)
- ``identity_encoder``: 112x112 identity ViT, identity-to-token MLPs, face alignment
- ``pipeline``: the denoising loop producing images and labels together

Only ``stages.generators.maugen.stage`` imports these (torch at module level).
"""

__all__: list[str] = []
