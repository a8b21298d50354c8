"""The core: what every simulation needs, and nothing that knows a phase, a run or a notebook.

=====================  ============================================================
module                 what it holds
=====================  ============================================================
:mod:`.domain`         payments, merchants, tiers, currencies
:mod:`.errors`         every exception payflow-lab raises, under ``PayflowError``
:mod:`.validation`     the checks every setting and argument goes through
:mod:`.calibration`    every number of the story's world, and where it comes from
:mod:`.world`          merchants, customers and the services a payment calls
:mod:`.scenarios`      the scripted afternoons (normal, Black Friday, recovery, ...)
:mod:`.traffic`        seeded arrivals following a day's profile
:mod:`.faults`         the fault plan a scenario or a widget changes
:mod:`.db`             the connection pool
:mod:`.dice`           random draws keyed by payment and call, the same on every backend
:mod:`.vtime`          virtual time on asyncio and trio; running a simulation from a notebook
:mod:`.recorder`       a run's figures: outcomes, latencies, the per-second series
:mod:`.columns`        the recorder's compact columns (the newest values in memory)
:mod:`.controls`       the thread-safe controls a live run takes (pause, pace, faults)
:mod:`.progress`       progress lines of long commands, on stderr
:mod:`.units`          figures as people read them (ms, MiB)
=====================  ============================================================

It imports only the standard library and third-party packages. What a user
needs of it is exported by :mod:`payflow_lab` itself.
"""
