"""The features job: latent features of images from any encoder (``imageae embed``).

``api`` holds :func:`~imageae.features.api.embed`, :func:`~imageae.features.api.embed_folder`
and the encoder protocol; ``cli`` registers ``imageae embed``.
"""
