"""FineFace (Varanka et al. 2024, arXiv 2407.20175): AU-conditioned text-to-image on public weights.

Our implementation of the published release (tvaranka/fineface, Apache-2.0) that loads its
file layout from local folders, nothing from the hub at run time:

- :mod:`.layout`: the expected files, their checks and the one error that names them all;
- :mod:`.attention`: the AU (and AU + FaceID) cross-attention processors and their install;
- :mod:`.encoders`: the AU encoder (12 AU intensities -> one token) and the FaceID projection;
- :mod:`.pipeline`: the loaded model (SD base + processors + LoRA + AU encoder) and a batch call;
- :mod:`.prompt`: the prompt from the record's description and demographic words;
- :mod:`.stage`: the ``fineface`` generator stage.

Only :mod:`.prompt`, :mod:`.layout` and :mod:`.stage` import without torch.
"""
