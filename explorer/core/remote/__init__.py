"""Checkpoints where they live: ``http(s)://``, ``hf://ORG/REPO[@REV]/PATH``, ``s3://``, ``gs://``, read in ranges
through a sparse local mirror in the user's cache (see :mod:`.mirror`).
"""
