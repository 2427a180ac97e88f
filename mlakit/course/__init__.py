"""Course tooling: the exercise checks, the grader and the exercise builder.

- :mod:`mlakit.course.checks`: one checker per exercise (``check_*``) with its
  library reference (``reference_*``) and :func:`~mlakit.course.checks.use_or_fallback`;
  notebooks write ``from mlakit.course import checks``.
- :mod:`mlakit.course.grade`: ``mlakit grade``, runs a notebook in a fresh
  kernel and reads the result line of every check.
- :mod:`mlakit.course.exercises`: ``mlakit exercises build / check``, writes
  ``exercises/`` from ``solutions/``.

This package sits on top of the library; nothing in the core imports it. The
submodules are imported on demand (the grader and the builder need the
notebook packages of the ``dev`` extra).
"""
