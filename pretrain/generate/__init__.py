"""Asking a trained model: GLM blank filling with a KV cache, sampling, and teacher-forced scoring.

Above the model (it imports model/, objectives/ and tokens only): ``prompt`` turns text with
[MASK]/[sMASK]/[gMASK] into Part A, ``infill.fill_blanks`` decodes every blank's Part-B block,
``kv_cache`` enters the model through its ``build_attention`` hook, ``sampling`` picks tokens,
``cloze`` and ``scoring`` lay out examples scored by teacher forcing (the trainer's downstream eval).
"""
