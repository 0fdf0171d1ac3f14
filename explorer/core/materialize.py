"""Turning a checkpoint's records into what ``torch.load`` would give: tensors on the meta device (shape, stride and
dtype, for key matching and simulated loads) or read from the file, numpy arrays, quantized tensors, torch's own
dtype and qscheme objects, with the file's sharing kept.

A :class:`Materializer` works for one checkpoint (its label names the file in errors); the checkpoint hands it the
object at a path, or its flat table (safetensors) when no record was made yet.
"""
from __future__ import annotations

from collections import OrderedDict
from itertools import compress, repeat
from operator import attrgetter, not_
from typing import Any, Callable

import torch

from ..errors import CorruptFileError
from .bytesource import read_record, torch_dtypes
from .gc_pause import gc_paused
from .loaded import MAX_DEPTH, all_tensor_records, has_data, items_of, keys_of, values_of
from .meta import meta_bulk, meta_of
from .records import EntryPath, PlainStateDict, copy_metadata, read_mask
from .safe_pickle.numpy_values import NumpyRecord, numpy_array
from .safe_pickle.records import QScheme, QuantizedRecord, TensorRecord, TorchDtype
from .safe_pickle.stand_ins import Uninitialized, uninitialized_tensor

# quantized dtype -> the integer dtype its values are stored as
_QUANTIZED_INT = {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}
_META_LAYOUT_ERRORS = (RuntimeError, TypeError, ValueError, OverflowError)

_SHAPE_OF = attrgetter("shape")
_DTYPE_OF = attrgetter("dtype")
_STRIDE_OF = attrgetter("stride")
_IS_PARAMETER_OF = attrgetter("is_parameter")
_REQUIRES_GRAD_OF = attrgetter("requires_grad")


def where(path: EntryPath, key=None) -> str:
    """A path (and a key inside the mapping at it) as errors spell it: ``a/b``, or ``/`` for the root."""
    return "/".join(path if key is None else path + (str(key),)) or "/"


class Materializer:
    """Makes the objects of one checkpoint. ``label``: the file, as errors name it; ``records_unshared()``: is every
    record of the file at one place only (then a meta tensor made for it needs no memo entry to be shared)?"""

    def __init__(self, label: str, records_unshared: Callable[[], bool]):
        self.label = label
        self._records_unshared = records_unshared

    def load(self, obj: Any, path: EntryPath, device: str) -> Any:
        """What ``torch.load`` gives for ``obj`` (found at ``path``), with tensors as ``device`` tensors."""
        with gc_paused():   # 10**6 tensors (and a memo entry each): a full collection would walk them all, often
            return self._materialize(obj, path, device, 0, {})

    @staticmethod
    def meta_table(table) -> "dict[str, torch.Tensor] | None":
        """A flat table's root on the meta device, from its columns; None: something unusual (the careful way)."""
        if table.columns is None:
            return None
        shapes, dtypes, _nbytes, kinds, _devices = table.columns(0, len(table.keys))
        if any(k != "tensor" for k in set(kinds)):
            return None
        tensors = meta_bulk(shapes, None, dtypes)
        if tensors is None:
            return None
        with gc_paused():
            return dict(zip(table.keys, tensors))

    def meta_state_dict(self, obj: Any, table, path: EntryPath, read_keys: set, read_prefixes: tuple = ()) -> Any:
        """See :meth:`explorer.core.checkpoint.Checkpoint.meta_state_dict`. ``table``: the flat table whose root is
        asked for, before any record was made (``obj`` is then None); else ``obj`` is the object at ``path``."""
        with gc_paused():
            if table is not None:
                keys = table.keys
                shapes, dtypes, _nbytes, kinds, _devices = table.columns(0, len(keys))
                if any(k != "tensor" for k in set(kinds)):
                    return None
                strides = None   # contiguous
                params, grads = [False] * len(keys), repeat(False, len(keys))
            else:
                if not isinstance(obj, dict) or not all_tensor_records(values_of(obj)) or not self._records_unshared():
                    return None
                keys = list(keys_of(obj))
                vals = list(values_of(obj))
                shapes, strides = list(map(_SHAPE_OF, vals)), list(map(_STRIDE_OF, vals))
                dtypes, params = list(map(_DTYPE_OF, vals)), list(map(_IS_PARAMETER_OF, vals))
                grads = map(_REQUIRES_GRAD_OF, vals)
            if not keys or not all(t is str for t in set(map(type, keys))):
                return None
            read = read_mask(keys, read_keys, read_prefixes)
            out = self._shared_stand_ins(keys, read, shapes, strides, dtypes, params, grads)
            if out is None:
                return None
            if any(read):   # the keys read: as load_object makes them
                if obj is None:
                    sub = OrderedDict((k, table.record(i)) for i, k in enumerate(keys) if read[i])
                else:
                    sub = OrderedDict(compress(items_of(obj), read))
                out.update(self._materialize(sub, path, "meta", 0, {}))
            meta = getattr(obj, "_metadata", None) if obj is not None else None
            if meta is not None:
                out._metadata = copy_metadata(meta)  # type: ignore[attr-defined]
            return out

    @staticmethod
    def _shared_stand_ins(keys, read, shapes, strides, dtypes, params, grads) -> PlainStateDict | None:
        """key -> one meta tensor per layout of the keys not read (shared by every such key), in a
        :class:`PlainStateDict` whose ``_stand_ins`` holds those tensors' ids; None when torch refuses a layout."""
        # the layout is the shape alone (no tuple per key) when every key has the same dtype, none is a parameter
        # and each shape comes with one stride
        stride_of = dict(zip(shapes, strides)) if strides is not None else None
        by_shape = len(set(dtypes)) == 1 and not any(params) and (
            stride_of is None or len(stride_of) == len(set(zip(shapes, strides))))  # type: ignore[arg-type]
        if by_shape:
            layouts = shapes
            unique = [(shape, stride_of[shape] if stride_of is not None else None, dtypes[0], False, False)
                      for shape in dict.fromkeys(compress(shapes, map(not_, read)))]
        else:
            layouts = list(zip(shapes, strides if strides is not None else repeat(None), dtypes, params, grads))
            unique = list(dict.fromkeys(compress(layouts, map(not_, read))))
        made = meta_bulk([u[0] for u in unique], [u[1] for u in unique] if strides is not None else None,
                         [u[2] for u in unique])
        if made is None:
            return None
        for i, (_shape, _stride, _dtype, is_param, grad) in enumerate(unique):
            if is_param:
                made[i] = torch.nn.Parameter(made[i], requires_grad=grad)
        stand_in = dict(zip([u[0] for u in unique] if by_shape else unique, made))
        out = PlainStateDict(zip(keys, map(stand_in.get, layouts)))
        out._stand_ins = frozenset(map(id, made))  # type: ignore[attr-defined]  # for code that renames keys
        return out

    def _meta_records(self, obj: dict, memo: dict):
        """``(key, meta tensor)`` of a mapping of records, in bulk; None when a record is shared (with this mapping
        or with one made before: ``memo`` keeps the sharing) or anything is unusual (the careful way)."""
        vals = list(values_of(obj))
        ids = None
        if not self._records_unshared():
            ids = list(map(id, vals))
            if len(set(ids)) != len(ids) or any(map(memo.__contains__, ids)):
                return None
        tensors = meta_bulk(list(map(_SHAPE_OF, vals)), list(map(_STRIDE_OF, vals)), list(map(_DTYPE_OF, vals)))
        if tensors is None:
            return None
        params = list(map(_IS_PARAMETER_OF, vals))
        if any(params):
            parameter = torch.nn.Parameter
            for i in compress(range(len(vals)), params):
                tensors[i] = parameter(tensors[i], requires_grad=vals[i].requires_grad)
        if ids is not None:
            memo.update(zip(ids, zip(vals, tensors)))
        return zip(keys_of(obj), tensors)

    def _materialize(self, obj, path, device, depth, memo):
        """``memo``: an object shared in the file is made once and shared in the result, as torch.load does."""
        if depth > MAX_DEPTH:
            raise CorruptFileError(f"{self.label}: nesting deeper than {MAX_DEPTH} levels")
        if type(obj) is TorchDtype or type(obj) is QScheme:   # torch.load gives torch's own objects
            return getattr(torch, str(obj), obj) if str(obj) in torch_dtypes() or type(obj) is QScheme else obj
        if isinstance(obj, Uninitialized):   # a lazy module's parameter: torch.load gives an uninitialized one
            done = memo.get(id(obj))
            if done is None:
                done = memo[id(obj)] = (obj, uninitialized_tensor(obj))
            return done[1]
        if not isinstance(obj, (TensorRecord, dict, list, tuple)):
            return obj
        done = memo.get(id(obj))
        if done is not None:
            return done[1]
        if type(obj) is NumpyRecord:   # torch.load gives the array itself
            out = numpy_array(obj)
        elif type(obj) is QuantizedRecord:   # data: its values are read (quantized modules pack them at load)
            out = self._quantized(obj, path)
        elif isinstance(obj, TensorRecord):
            if device == "meta" or not has_data(obj):
                t = self._meta_tensor(obj, path)   # saved from the meta device: torch.load gives a meta tensor too
            else:
                t = read_record(obj, file_label=self.label)
            out = torch.nn.Parameter(t, requires_grad=obj.requires_grad) if obj.is_parameter else t
        elif isinstance(obj, dict):
            out = self._mapping(obj, path, device, depth, memo)
        elif isinstance(obj, list):
            out = []
            memo[id(obj)] = (obj, out)
            out.extend(self._materialize(v, path + (str(i),), device, depth + 1, memo) for i, v in enumerate(obj))
        else:
            out = tuple(self._materialize(v, path + (str(i),), device, depth + 1, memo) for i, v in enumerate(obj))
        memo[id(obj)] = (obj, out)  # keeps ``obj`` alive so its id stays its own
        return out

    def _mapping(self, obj: dict, path, device, depth, memo):
        """A mapping made: its records in bulk on the meta device when they allow it, else one entry at a time."""
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        memo[id(obj)] = (obj, out)
        records = device == "meta" and all_tensor_records(values_of(obj))
        bulk = self._meta_records(obj, memo) if records else None
        if bulk is not None:   # a state dict: no Python code per tensor
            out.update(bulk)
        elif records:   # shared records: one meta tensor per record, shared where the record is
            meta_tensor, parameter = self._meta_tensor, torch.nn.Parameter
            for k, v in items_of(obj):
                done = memo.get(id(v))
                if done is None:
                    t = meta_tensor(v, path, k)
                    if v.is_parameter:
                        t = parameter(t, requires_grad=v.requires_grad)
                    memo[id(v)] = (v, t)
                else:
                    t = done[1]
                out[k] = t
        else:
            for k, v in obj.items():
                out[k] = self._materialize(v, path + (str(k),), device, depth + 1, memo)
        meta = getattr(obj, "_metadata", None)
        if meta is not None:
            if not isinstance(out, OrderedDict):
                out = OrderedDict(out)
            # each caller gets its own copy: load_state_dict(assign=True) writes into the per-module entries
            out._metadata = copy_metadata(meta)  # type: ignore[attr-defined]
        return out

    def _quantized(self, rec: QuantizedRecord, path) -> torch.Tensor:
        """The quantized tensor torch.load would rebuild, made from the record's integer values and its
        quantization parameters (numbers, or small tensors read the same way)."""
        int_dtype = _QUANTIZED_INT.get(rec.dtype or "")
        qp = rec.qparams
        at = where(path)
        if int_dtype is None or not qp or type(qp[0]) is not QScheme:
            raise CorruptFileError(f"{self.label}: cannot rebuild the quantized tensor at {at} "
                                   f"(dtype {rec.dtype!r}, quantization {str(qp)[:60]!r})")
        ints = TensorRecord(rec.storage, rec.storage_offset, rec.shape, rec.stride, int_dtype)
        values = read_record(ints, file_label=self.label).contiguous().clone()
        try:
            if qp[0] in ("per_tensor_affine", "per_tensor_symmetric") and len(qp) == 3:
                return torch._make_per_tensor_quantized_tensor(values, float(qp[1]), int(qp[2]))
            if qp[0] in ("per_channel_affine", "per_channel_affine_float_qparams", "per_channel_symmetric") \
                    and len(qp) == 4 and type(qp[3]) is int:
                float_zp = qp[0] == "per_channel_affine_float_qparams"

                def column(v, dtype):
                    if isinstance(v, TensorRecord):
                        return read_record(v, file_label=self.label).to(dtype)
                    return torch.tensor(list(v), dtype=dtype)
                scales = column(qp[1], torch.float if float_zp else torch.double)
                zero_points = column(qp[2], torch.float if float_zp else torch.long)
                return torch._make_per_channel_quantized_tensor(values, scales, zero_points, qp[3])
        except (RuntimeError, TypeError, ValueError, IndexError) as e:
            raise CorruptFileError(f"{self.label}: the quantized tensor at {at} cannot be rebuilt "
                                   f"({type(e).__name__}: {str(e)[:120]}); the file is corrupt") from None
        raise CorruptFileError(f"{self.label}: the quantized tensor at {at} has a quantization torch does not "
                               f"rebuild ({str(qp[0])!r})")

    def _meta_tensor(self, rec: TensorRecord, path, key=None) -> torch.Tensor:
        """``key``: the record's key in the mapping at ``path`` (else ``path`` is the record's own)."""
        dt = torch_dtypes().get(rec.dtype or "")
        if dt is None:
            raise CorruptFileError(f"{self.label}: cannot represent dtype {rec.dtype!r} at {where(path, key)}")
        try:
            return meta_of(rec.shape, rec.stride, dt)
        except _META_LAYOUT_ERRORS as e:
            raise CorruptFileError(f"{self.label}: the tensor at {where(path, key)} has an impossible shape "
                                   f"{list(rec.shape)[:8]} ({type(e).__name__}); the file is corrupt") from None
