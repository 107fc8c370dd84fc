"""The ``convformer-fast`` command: :mod:`.app` builds the parser from each room's commands
(core: ``info``, ``check``; :mod:`convformer_fast.perf.commands`: ``bench``, ``flops``,
``kernels``; :mod:`convformer_fast.pose.commands`: ``train``, ``eval``, ``infer``) and
:mod:`.args` holds what every command parses the same way. Entry point:
:func:`convformer_fast.cli.app.main` (also ``python -m convformer_fast.cli``)."""
