"""A training run at a glance: the checkpoints of one model in step order (``discover``), every key's figures at
every checkpoint, streamed and cached (``measure``, ``cache``), what they say (``findings``); ``run.open_series``
ties them together."""
