"""What commands print while they work: start-up stage lines, and batch-job progress."""

import io
import re

from core.progress import ProgressBar, StartupLog


class Terminal(io.StringIO):
    """An output that says it is a terminal, as stdout does in an interactive shell."""

    def isatty(self) -> bool:
        return True


def lines_of(total: int, first: int = 1) -> list[str]:
    out = io.StringIO()
    progress = ProgressBar("eval questions", out)
    for done in range(first, total + 1):
        progress(done, total)
    return out.getvalue().splitlines()


def test_a_log_gets_a_plain_line_each_5_percent():
    lines = lines_of(1000)
    assert [line.split()[2] for line in lines] == ["1/1000"] + [f"{50 * k}/1000" for k in range(1, 21)]
    assert re.fullmatch(r"eval questions 500/1000 \(50%\), [\d.]+/s, \S+ left", lines[10])
    assert lines[-1].startswith("eval questions 1000/1000 (100%)") and "left" not in lines[-1]


def test_a_short_job_gets_a_line_per_item_and_a_resumed_one_starts_where_it_is():
    assert len(lines_of(7)) == 7
    resumed = lines_of(100, first=41)  # 40 done before a resume: no line for them
    assert resumed[0].startswith("eval questions 41/100 (41%)") and len(resumed) == 13


def test_a_terminal_gets_a_tqdm_bar_and_no_plain_lines():
    out = Terminal()
    progress = ProgressBar("difficulty", out)
    for done in range(1, 8):
        progress(done, 7)
    text = out.getvalue()
    assert "\r" in text and "difficulty: 100%" in text and "7/7" in text
    assert "(100%)" not in text


def test_startup_lines_carry_the_seconds_since_the_start():
    out = io.StringIO()
    say = StartupLog(out)
    say("rollout engine 1/2 ready")
    say("rollout engine 2/2 ready")
    lines = out.getvalue().splitlines()
    assert [re.sub(r"^\[start \d+\.\ds\] ", "", line) for line in lines] == [
        "rollout engine 1/2 ready", "rollout engine 2/2 ready"]
