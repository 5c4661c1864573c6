# SPDX-License-Identifier: GPL-2.0-or-later
"""DRBD 8.4's resync controller and c-min-rate throttle (replica.rate_control), fed with
measurements: no clock, no socket."""
from hypothesis import given
from hypothesis import strategies as st

from replica.protocol.repl_control import ResyncPause, decode_control, encode_control
from replica.rate_control import (
    ACTIVITY_BYTES,
    BLOCK,
    STEP_S,
    AppIoThrottle,
    ControllerSettings,
    RateController,
)

KiB, MiB = 1024, 1024 * 1024
DEFAULTS = ControllerSettings()


def run_ideal_link(ctl: RateController, steps: int) -> list[int]:
    """A link that delivers every step's bytes before the next step (RTT << 0.1 s)."""
    out, acked = [], 0
    for _ in range(steps):
        acked = ctl.step(acked, 0)
        out.append(acked)
    return out


def test_defaults_are_drbd_8_4_s():
    assert (DEFAULTS.resync_rate_bps, DEFAULTS.plan_ahead_s, DEFAULTS.fill_target_bytes,
            DEFAULTS.delay_target_s, DEFAULTS.max_rate_bps, DEFAULTS.min_rate_bps) == (
        250 * KiB, 2.0, 50 * KiB, 1.0, 100 * MiB, 250 * KiB)
    assert DEFAULTS.is_dynamic


def test_from_disk_takes_the_parsed_options():
    from replica.config import DiskOptions
    assert ControllerSettings.from_disk(DiskOptions()) == DEFAULTS


def test_plan_ahead_0_is_the_fixed_resync_rate():
    ctl = RateController(ControllerSettings(plan_ahead_s=0, resync_rate_bps=10 * MiB))
    assert {ctl.step(a, f) for a, f in ((0, 0), (5 * MiB, 0), (0, 50 * MiB))} == {MiB}
    assert ctl.rate_bps == 10 * MiB


def test_the_first_step_starts_from_resync_rate_spread_over_the_plan():
    # DRBD: want = resync-rate * SLEEP_TIME * steps, one step-th of it now
    ctl = RateController(DEFAULTS)
    first = ctl.step(0, 0)
    assert abs(first - 250 * KiB * STEP_S) <= BLOCK


def test_fill_target_climbs_past_the_fixed_default_on_a_fast_link():
    rates = run_ideal_link(RateController(DEFAULTS), 100)
    assert rates[-1] > rates[50] > rates[0]                     # keeps climbing on a free link
    assert rates[-1] / STEP_S > 4 * 250 * KiB                   # not the old fixed 250 KiB/s


def test_delay_target_reaches_c_max_rate_within_the_plan_ahead():
    ctl = RateController(ControllerSettings(fill_target_bytes=0))
    rates = run_ideal_link(ctl, 25)
    assert rates[-1] == 100 * MiB * STEP_S
    assert ctl.rate_bps == 100 * MiB


def test_c_max_rate_0_is_unlimited():
    ctl = RateController(ControllerSettings(fill_target_bytes=0, max_rate_bps=0))
    assert run_ideal_link(ctl, 40)[-1] > 100 * MiB * STEP_S


def test_a_full_pipe_sends_only_what_came_back():
    # in flight already at the fill target: the plan corrects downwards, never above `acked`
    ctl = RateController(DEFAULTS)
    ctl.step(0, 0)
    for _ in range(40):
        n = ctl.step(8 * KiB, 10 * MiB)
    assert n <= 8 * KiB


@given(st.lists(st.tuples(st.integers(-MiB, 1 << 34), st.integers(-MiB, 1 << 34)), max_size=60),
       st.sampled_from([0, 0.1, 2.0, 30.0]), st.sampled_from([0, 512, 50 * KiB, 5 * MiB]),
       st.sampled_from([0, 1 * MiB, 100 * MiB]))
def test_any_measurements_give_a_bounded_whole_block_step(samples, plan, fill, cap):
    ctl = RateController(ControllerSettings(plan_ahead_s=plan, fill_target_bytes=fill,
                                            max_rate_bps=cap))
    for acked, in_flight in samples:
        n = ctl.step(acked, in_flight)
        assert n >= 0 and n % BLOCK == 0
        if plan and cap:
            assert n <= cap * STEP_S + BLOCK
        if not plan:
            assert n == 28 * KiB                # 250 KiB/s * 0.1 s, up to whole blocks


def test_throttle_holds_back_only_while_the_application_is_busy_and_resync_is_fast():
    thr = AppIoThrottle(250 * KiB)
    assert not thr.should_slow_down(0, 0, 0.0)                  # first check: no history
    # resync at 10 MiB/s, application idle: full speed
    assert not thr.should_slow_down(0, 10 * MiB, 1.0)
    assert not thr.app_active
    # the application writes: above c-min-rate, so the resync waits
    assert thr.should_slow_down(MiB, 10 * MiB, 1.1)
    # ... until the resync's recent rate fell below c-min-rate (the 6 s window slides)
    t, app, waited = 1.1, MiB, 0
    while thr.should_slow_down(app := app + MiB, 10 * MiB, t := t + STEP_S):
        waited += 1
    assert thr.app_active and 40 < waited < 80
    assert thr.app_active_budget == 24 * KiB                    # c-min-rate's share of a step
    # the application stops: no throttle at once
    assert not thr.should_slow_down(app, 10 * MiB, t + STEP_S)
    assert not thr.app_active


def test_small_application_io_is_not_activity():
    thr = AppIoThrottle(250 * KiB)
    thr.should_slow_down(0, 0, 0.0)
    assert not thr.should_slow_down(ACTIVITY_BYTES, 50 * MiB, 1.0)


def test_c_min_rate_0_never_throttles():
    thr = AppIoThrottle(0)
    thr.should_slow_down(0, 0, 0.0)
    assert not thr.should_slow_down(100 * MiB, 100 * MiB, 1.0)


@given(st.booleans())
def test_resync_pause_round_trips(paused):
    assert decode_control(encode_control(ResyncPause(paused))) == ResyncPause(paused)


def test_resync_pause_with_a_bad_flag_is_refused():
    import pytest

    from replica.errors import RemoteProtocolError
    from replica.protocol.repl_codec import Frame, encode_frame
    from replica.protocol.repl_wire import ReplPacket
    with pytest.raises(RemoteProtocolError, match="RESYNC_PAUSE: invalid: aux=2"):
        decode_control(encode_frame(Frame(ReplPacket.RESYNC_PAUSE, aux=2)))
