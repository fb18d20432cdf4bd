"""The run's progress line: images, rate over the last minute, ETA; rewritten in a terminal, sparse in a log."""

import io

from labeler.run.display import ProgressDisplay, format_duration


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_terminal_gets_one_line_rewritten_with_rate_and_eta():
    clock, stream = Clock(), io.StringIO()
    display = ProgressDisplay(1000, already_done=100, stream=stream, interactive=True, clock=clock)
    clock.now += 10
    display.update(150)
    assert stream.getvalue() == "\r\033[Klabelled 150 / 1,000 images (15.0%) · 5.00 images/s · ETA 2m 50s"
    clock.now += 10
    display.update(250)  # 150 images in 20 s since the start
    assert stream.getvalue().endswith("\r\033[Klabelled 250 / 1,000 images (25.0%) · 7.50 images/s · ETA 1m 40s")
    display.close()
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\n") == 1


def test_the_rate_follows_the_last_minute():
    clock = Clock()
    display = ProgressDisplay(10_000, stream=io.StringIO(), interactive=True, clock=clock)
    for _ in range(20):  # 10 images/s for 100 s ...
        clock.now += 5
        display.update(display.samples[-1][1] + 50)
    for _ in range(20):  # ... then 2 images/s
        clock.now += 5
        display.update(display.samples[-1][1] + 10)
    assert display.rate() == 2.0


def test_a_log_gets_a_line_a_minute_and_the_last_count():
    clock, stream = Clock(), io.StringIO()
    display = ProgressDisplay(90, stream=stream, interactive=False, log_every=60, clock=clock)
    for done in range(5, 95, 5):  # a poll every 5 s
        clock.now += 5
        display.update(min(done, 90))
    display.close()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "labelled 5 / 90 images (5.6%) · 1.00 images/s · ETA 1m 25s",
        "labelled 65 / 90 images (72.2%) · 1.00 images/s · ETA 25s",
        "labelled 90 / 90 images (100.0%) · 1.00 images/s · ETA 0s",
    ]


def test_durations_read_as_a_person_says_them():
    assert [format_duration(s) for s in (0, 59.4, 61, 3599, 3600, 7322)] == ["0s", "59s", "1m 01s", "59m 59s",
                                                                             "1h 00m", "2h 02m"]
