"""The front door: the ``payflow-lab`` command and what it prints.

=====================  ============================================================
module                 what it holds
=====================  ============================================================
:mod:`.cli`            ``payflow-lab``: ``run``, ``bench``, ``lessons``, and the story
:mod:`.narrate`        the whole evolution, narrated, and the story's Key Metrics
:mod:`.report`         a run's summary as terminal tables (rich)
:mod:`.bench`          ``payflow-lab bench``: the benchmarks, by group
:mod:`.simpy_twin`     Phase 1 on SimPy, the bench's yardstick for the engine's kernel
:mod:`.workshop`       the lessons as package data; ``payflow-lab lessons``
=====================  ============================================================
"""
