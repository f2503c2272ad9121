"""The toy world: a small captioned image domain and a text-to-image model trained on it by our own code,
so that the project's commands run offline.

* :mod:`.scenes`: seeded procedural scenes (shapes, colours, textures, landscapes) and their captions;
* :mod:`.data`: the toy dataset, degraded at random with :mod:`iqa_adapter.distortions` (folder or shards);
* :mod:`.tokenizer`: a word-level CLIP tokenizer of the caption vocabulary;
* :mod:`.base_model`: the toy Stable Diffusion pipeline, its training and saving;
* :mod:`.caption_check`, :mod:`.evaluation`: does a generated image follow its caption; VAE PSNR; grids;
* :mod:`.cli`: ``iqa-adapter toy make-data | train-base | evaluate-base``.
"""
