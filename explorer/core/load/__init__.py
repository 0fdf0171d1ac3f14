"""What simulating ``model.load_state_dict(checkpoint)`` rests on, below the report and the remap suggestions.

- ``inputs``: the two sides as torch is handed them (:class:`inputs.CheckpointInput`, with meta tensors or real
  values);
- ``index``: the model's module tree and state-dict slots, walked once;
- ``standins``: a data-less copy of the model whose tensors record ``copy_`` instead of copying;
- ``recorder``: what each pass records (copies, in-place changes) and the bit-for-bit value comparison;
- ``passes``: one run of torch's own ``load_state_dict`` on a stand-in (:func:`passes.run_pass`), the value
  comparison without running torch again, and the structural counts remap previews use.
"""
