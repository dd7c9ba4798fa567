import pytest

from core.stream import PromptStream, StreamPosition
from core.types import Sample


def samples(n: int) -> list[Sample]:
    return [Sample(id=f"s{i}", data_source="x", messages=[], images=[], question="", answer="")
            for i in range(n)]


def take(stream: PromptStream, k: int) -> list[tuple[str, str]]:
    return [(s.id, g) for s, g in (stream.next() for _ in range(k))]


def test_each_epoch_is_a_permutation_with_its_own_order():
    stream = PromptStream(samples(10), shuffle=True, seed=0)
    first, second = take(stream, 10), take(stream, 10)
    everyone = sorted(f"s{i}" for i in range(10))
    assert sorted(i for i, _ in first) == sorted(i for i, _ in second) == everyone
    assert [i for i, _ in first] != [i for i, _ in second]
    assert stream.position == StreamPosition(epoch=1, index=10, issued=20)


def test_group_ids_are_unique_across_epochs():
    stream = PromptStream(samples(3), shuffle=True, seed=0)
    ids = [g for _, g in take(stream, 9)]
    assert len(set(ids)) == 9


def test_resuming_from_a_position_continues_identically():
    whole = PromptStream(samples(7), shuffle=True, seed=3)
    expected = take(whole, 20)
    part = PromptStream(samples(7), shuffle=True, seed=3)
    head = take(part, 11)
    resumed = PromptStream(samples(7), shuffle=True, seed=3, position=part.position)
    assert head + take(resumed, 9) == expected


def test_unshuffled_stream_keeps_file_order():
    stream = PromptStream(samples(3), shuffle=False, seed=0)
    assert [i for i, _ in take(stream, 4)] == ["s0", "s1", "s2", "s0"]


def test_empty_data_is_refused():
    with pytest.raises(ValueError, match="at least one sample"):
        PromptStream([], shuffle=True, seed=0)
