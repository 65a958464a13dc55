"""MagicFace (Wei et al. 2025, arXiv 2501.02260): AU-vector editing of a given face on public weights.

Our implementation of the published release (weimengting/MagicFace, code and weights
Apache-2.0) that loads its file layout from local folders, nothing from the hub at run time:

- :mod:`.layout`: the expected files, their checks and the one error that names them all;
- :mod:`.source`: the per-identity inputs (512 px face crop and the landmark-hull bg stand-in);
- :mod:`.parsing`: the release's bg image from BiSeNet face parsing plus our jaw points;
- :mod:`.cache`: those inputs kept on disk beside a bank folder's index;
- :mod:`.unets`: the two UNets as stock diffusers UNets loaded strictly, the identity
  self-attention processor and the identity-feature capture;
- :mod:`.pipeline`: the loaded model, identity preparation and one batched, seeded call;
- :mod:`.stage`: the ``magicface`` generator stage.

:mod:`.layout`, :mod:`.source`, :mod:`.parsing`, :mod:`.cache` and :mod:`.stage` import
without torch (:class:`.parsing.FaceParser` imports it when built).
"""
