"""K/V-eviction research harness: budgeted context K/V for the chunked runtime
(:mod:`.store`), eviction policies (:mod:`.policies`), and the suites behind
``motioncache research kv`` (:mod:`.video`, :mod:`.text`)."""
