"""Reading pickles without running them: the safe unpickler (:mod:`.unpickler`), the records it makes
(:mod:`.records`, :mod:`.inert`, :mod:`.stand_ins`, :mod:`.numpy_values`), the bounds it reads within
(:mod:`.hash_work`, :mod:`.limits`) and the keys it cleans (:mod:`.printable`)."""
