"""Performance tools: whole-model benchmarks (:mod:`.bench`), FLOP counting (:mod:`.flops`),
roofline estimates (:mod:`.roofline`) and the GPU-less kernel audit (:mod:`.audit`), with
their ``convformer-fast bench / flops / kernels`` commands (:mod:`.commands`).

Nothing here is imported by the core package: a model runs without any of it.
"""
