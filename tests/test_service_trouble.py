"""Turning what the SDKs retried into history lines: counted, worded, one episode at a time."""

from __future__ import annotations

from expert_pipeline.adapters.service_trouble import (
    NO_ANSWER,
    ServiceUnavailable,
    TroubleEpisodes,
    TroubleLog,
    describe,
)


def test_the_log_counts_only_answers_that_are_retried_and_take_resets_it() -> None:
    log = TroubleLog()
    for status in (200, 404, 401, 429, 429, 500, 503, NO_ANSWER, 408):
        log.record(status)
    assert log.take() == {429: 2, 500: 1, 503: 1, NO_ANSWER: 1, 408: 1}
    assert log.take() == {}


def test_describe_words_statuses_and_counts_in_order() -> None:
    assert describe("embedding provider", {500: 1, 429: 3, NO_ANSWER: 2}) == (
        "The embedding provider could not be reached twice and answered 429 (rate limited) 3 times, "
        "500 (server error) once; retried successfully"
    )
    assert describe("file storage", {599: 12}, "the retries ran out", steps=3, unit="files") == (
        "The file storage answered 599 12 times over 3 files in a row; the retries ran out"
    )


def test_a_one_step_episode_is_one_line_said_at_once() -> None:
    episodes = TroubleEpisodes("embedding provider", "batches")
    report = episodes.after_step({429: 2})
    assert report is not None and not report.gave_up
    assert report.message == "The embedding provider answered 429 (rate limited) twice; retried successfully"
    assert report.data("provider_retries") == {
        "kind": "provider_retries", "statuses": {"429": 2}, "steps": 1, "gave_up": False,
    }
    assert episodes.after_step({}) is None  # a clean step ends it; nothing more to say
    assert episodes.close() is None


def test_a_long_episode_is_said_when_it_begins_and_summed_up_when_it_ends() -> None:
    episodes = TroubleEpisodes("embedding provider", "batches")
    said = [episodes.after_step(counts) for counts in ({429: 1}, {429: 2}, {500: 1}, {}, {}, {503: 1})]
    said.append(episodes.close())  # the end of the stage ends the second, one-step episode quietly
    messages = [r.message for r in said if r is not None]
    assert messages == [
        "The embedding provider answered 429 (rate limited) once; retried successfully",
        "The embedding provider answered 429 (rate limited) 3 times, 500 (server error) once "
        "over 3 batches in a row; retried successfully",
        "The embedding provider answered 503 (unavailable) once; retried successfully",
    ]


def test_a_step_that_fails_for_good_closes_the_episode_saying_the_retries_ran_out() -> None:
    episodes = TroubleEpisodes("file storage", "files")
    assert episodes.after_step({503: 2}) is not None
    report = episodes.after_step({503: 6}, failed=True)
    assert report is not None and report.gave_up and report.steps == 2
    assert report.message == (
        "The file storage answered 503 (unavailable) 8 times over 2 files in a row; the retries ran out"
    )
    assert episodes.close() is None  # nothing left open


def test_service_unavailable_says_what_the_service_answered_shortly() -> None:
    down = ServiceUnavailable("s3://b/k: detail for the log", service="file storage", status=503, attempts=6)
    assert down.answer == "answered 503 (unavailable) on all 6 attempts"
    assert str(down) == "s3://b/k: detail for the log"
    unreachable = ServiceUnavailable("refused", service="embedding provider", status=NO_ANSWER, attempts=1)
    assert unreachable.answer == "could not be reached"
