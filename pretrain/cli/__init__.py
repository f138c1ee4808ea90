"""The command-line verbs of ``python -m pretrain``, one module each (see ``pretrain/__main__.py``).

They sit on top of every package and nothing below imports them.
"""
