"""Lesson 03's challenge, time-out-the-work: the reference passes and each wrong solution fails where it should,
on asyncio and on trio (the tests are written once, in challenge_support.py; one file per challenge spreads them
over the cores)."""

from challenge_support import challenge_tests

globals().update(challenge_tests("time-out-the-work"))
