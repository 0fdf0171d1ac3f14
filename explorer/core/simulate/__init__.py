"""Simulation: predict what ``model.load_state_dict(checkpoint)`` would do, without doing it to the model.

How it stays exact: torch itself does the key matching. The model is deep-copied into a *stand-in* whose parameters and
buffers are data-less meta tensors of the same shape and dtype (tensors of at most ``_SMALL`` elements, such as
BatchNorm's ``num_batches_tracked``, are real clones, because torch's own code looks at their device). Every hook,
``_load_from_state_dict`` override (BatchNorm versions, InstanceNorm, weight-norm renames), the checkpoint's
``_metadata``, ``strict`` and ``assign`` then run for real on the stand-in. The stand-in tensors are instances of
small ``Parameter``/``Tensor`` subclasses whose ``copy_`` records (destination, source) into the running pass instead of
copying, and whose common in-place methods record that a hook changed them.

Two passes:

* the structural pass gives torch a meta-tensor checkpoint: raise or not, exception type and text, missing and
  unexpected keys in torch's order, which tensor receives which checkpoint tensor -- no tensor bytes are read;
* the value pass (``compare_values=True``) gives torch the checkpoint's tensors as read-only memory maps; each
  recorded ``copy_`` is performed into a temporary tensor of the model's dtype (so torch's own casting rules and
  copy errors apply) and compared bit for bit with the model's current value, then dropped. One tensor at a time: the
  model's data and the checkpoint's data are never copied as a whole.

The user's model is never written: the stand-in shares no tensor with it, and afterwards every parameter and buffer
slot of the model is checked (object identity and version counter) to prove it.

Known limits (each reported, never silently wrong where it can be detected):

* a hook's closure (and default arguments) see the stand-in's modules and tensors (``module is model.layer`` holds),
  and ``param.data`` of a stand-in records like the stand-in; a hook that reaches the *real* model another way (a
  global, a container) runs against it: the snapshot check reports it in ``notes``;
* a hook that edits a checkpoint tensor in place is seen through version counters (not through ``.data``): the
  values compared are the edited ones;
* tensor subclasses the file names are simulated as plain tensors (their code never runs): the notes say the
  prediction cannot be exact;
* a hook that changes a model tensor in place (``zero_``, ``mul_`` ...) other than by ``copy_``: the key is reported
  changed with ``certain=False``;
* hooks that read the *model's* values see data-less stand-ins (the checkpoint's values are real in the values pass);
* copy errors that depend on the destination's memory layout (overlapping, expanded parameters) are not reproduced;
* torch's own matching is quadratic in the number of children of one module (a flat ``Sequential`` of 1,000 layers):
  the simulation pays it as the real load does.

Modules: ``run`` (``simulate_load``), ``build`` (the report from the last pass), ``report`` (``LoadReport`` and its
JSON), ``explain`` (the explanations). Below them: ``explorer.core.remap`` (suggestions) and ``explorer.core.load``
(inputs, stand-ins, recorder, passes).
"""
from __future__ import annotations
