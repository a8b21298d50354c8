"""Dice: a call's random numbers depend on what the call is, never on when it asks."""

from __future__ import annotations

import math
import statistics

import pytest

from payflow_lab.core.dice import Dice
from payflow_lab.core.domain import Payment
from payflow_lab.core.recorder import Recorder
from payflow_lab.core.world import World


def _world(seed: int = 1) -> World:
    return World(seed=seed, scale=0.01, clock=lambda: 0.0, recorder=Recorder(lambda: 0.0))


def _payment(n: int) -> Payment:
    return Payment(id=f"pay_{n:012x}", merchant_id="mch_00001", amount_cents=1000, currency="USD", created_at=0.0)


def test_the_same_key_gives_the_same_numbers():
    assert [Dice(b"k").random() for _ in range(3)] == [Dice(b"k").random()] * 3
    a, b = Dice(b"k"), Dice(b"k")
    assert [a.random() for _ in range(9)] == [b.random() for _ in range(9)]  # past one digest's four
    assert Dice(b"k").random() != Dice(b"l").random()


def test_draws_are_uniform_and_lognormal_as_documented():
    uniforms = [Dice(b"u%d" % i).random() for i in range(20_000)]
    assert all(0.0 <= u < 1.0 for u in uniforms)
    assert abs(statistics.fmean(uniforms) - 0.5) < 0.01
    logs = [math.log(Dice(b"l%d" % i).lognormvariate(0.5, 0.25)) for i in range(20_000)]
    assert abs(statistics.fmean(logs) - 0.5) < 0.01
    assert abs(statistics.stdev(logs) - 0.25) < 0.01
    expo = [Dice(b"e%d" % i).expovariate(4.0) for i in range(20_000)]
    assert abs(statistics.fmean(expo) - 0.25) < 0.01


def test_a_key_must_be_bytes():
    with pytest.raises(TypeError, match="bytes"):
        Dice("text")  # type: ignore[arg-type]


def test_a_calls_dice_do_not_depend_on_the_order_calls_are_made():
    one, two = _payment(1), _payment(2)
    w1 = _world()
    first = (w1.dice(one, "webhook").random(), w1.dice(two, "webhook").random(), w1.dice(one, "risk").random())
    w2 = _world()  # the same calls, asked for in another order
    risk = w2.dice(one, "risk").random()
    webhook_two = w2.dice(two, "webhook").random()
    webhook_one = w2.dice(one, "webhook").random()
    assert (webhook_one, webhook_two, risk) == first


def test_each_retry_of_a_call_gets_new_numbers():
    w = _world()
    payment = _payment(1)
    tries = [w.dice(payment, "webhook").random() for _ in range(3)]
    assert len(set(tries)) == 3
    again = _world()
    assert [again.dice(payment, "webhook").random() for _ in range(3)] == tries


def test_the_seed_changes_every_call():
    payment = _payment(1)
    assert _world(1).dice(payment, "webhook").random() != _world(2).dice(payment, "webhook").random()


def test_counting_calls_keeps_nothing_once_the_payment_is_gone():
    import gc

    w = _world()
    for n in range(100):
        w.dice(_payment(n), "webhook")
    gc.collect()
    assert len(w._calls) == 0
