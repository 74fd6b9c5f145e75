"""Audience stage: when to classify, how samples combine, dwell, attention and counting."""

import numpy as np

from edge.config import AudienceConfig
from edge.pipeline.audience import Audience, head_pose
from edge.pipeline.track import Track
from edge.records import Demographics, VisitTally

from conftest import total

FRONTAL = np.array([[40, 50], [60, 50], [50, 61], [42, 70], [58, 70]], np.float32)
TURNED = np.array([[40, 50], [60, 50], [62, 61], [44, 70], [60, 70]], np.float32)


def track(tid, t0, now, *, width=40.0, landmarks=FRONTAL, state="confirmed", matched=True):
    return Track(
        id=tid,
        box=np.array([30, 40, 30 + width, 90], np.float32),
        score=0.9,
        landmarks=landmarks,
        first_seen=t0,
        last_seen=now,
        hits=5,
        misses=0,
        state=state,
        det_index=0 if matched else -1,
    )


def demo(class_probs, male):
    return Demographics(
        np.array([30.0], np.float32),
        np.array([class_probs], np.float32),
        np.array([male], np.float32),
    )


def one_visitor(config: AudienceConfig, class_probs, male) -> VisitTally:
    """The interval report after one face, classified once, stayed 2 s and left."""
    aud = Audience("cam", config)
    t = track(1, 0.0, 2.0)
    aud.add_samples([t], demo(class_probs, male), 2.0)
    aud.update([t], [], 2.0, 0.1)
    return aud.close_interval(3.0, flush=True)


def test_head_pose_of_frontal_and_turned_faces():
    yaw, pitch = head_pose(FRONTAL)
    assert abs(yaw) < 0.01 and abs(pitch) < 0.1
    assert head_pose(TURNED)[0] > 0.5


def test_classified_when_confirmed_then_only_for_better_view_or_interval():
    aud = Audience("cam", AudienceConfig(reclassify_interval_s=2.0, better_face_ratio=1.3))
    assert aud.wants_classification([track(1, 0, 0, state="tentative")], 0.0) == []
    t = track(1, 0, 0.1)
    assert aud.wants_classification([t], 0.1) == [0]
    aud.add_samples([t], demo([0.1, 0.8, 0.1], 0.2), 0.1)
    assert aud.wants_classification([track(1, 0, 0.5)], 0.5) == []  # same view
    bigger = [track(1, 0, 0.6, width=60)]
    assert aud.wants_classification(bigger, 0.6, better_faces=False) == []  # can wait
    assert aud.wants_classification(bigger, 0.6) == [0]  # bigger face
    assert aud.wants_classification([track(1, 0, 2.2)], 2.2, better_faces=False) == [0]  # due
    assert aud.wants_classification([track(1, 0, 2.2)], 2.2) == [0]  # interval due
    assert aud.wants_classification([track(1, 0, 0.7, matched=False)], 0.7) == []  # no face now


def test_sample_cap():
    aud = Audience("cam", AudienceConfig(max_samples=2, reclassify_interval_s=0.1))
    for now in (0.0, 1.0):
        aud.add_samples([track(1, 0, now)], demo([0.2, 0.6, 0.2], 0.5), now)
    assert aud.wants_classification([track(1, 0, 5.0, width=200)], 5.0) == []


def test_samples_combine_into_a_stable_label():
    aud = Audience("cam")
    t = track(7, 0, 0)
    for probs, male in [([0.1, 0.6, 0.3], 0.7), ([0.1, 0.3, 0.6], 0.6), ([0.05, 0.25, 0.7], 0.8)]:
        aud.add_samples([t], demo(probs, male), 0)
    person = aud.people[7]
    assert person.samples == 3 and person.age_class == "old" and person.gender == "male"
    np.testing.assert_allclose(person.class_probs.sum(), 1)


def test_bigger_frontal_looks_weigh_more_and_replace_turned_ones():
    """Samples are weighed by face quality (size x frontal factor), and a strongly
    turned head's looks give way to the first frontal look (issue 26: gender was wrong
    on 1 in 3 turned chips, 1 in 8 frontal ones)."""
    aud = Audience("cam", AudienceConfig(max_samples=2, reclassify_interval_s=100.0))
    turned = track(5, 0, 0.0, width=80, landmarks=TURNED)
    aud.add_samples([turned], demo([0.05, 0.9, 0.05], 0.9), 0.0)  # turned: "male"
    person = aud.people[5]
    assert person.gender == "male" and not person.frontal_seen
    aud.add_samples([turned], demo([0.05, 0.9, 0.05], 0.8), 0.1)
    # the cap is reached, but only turned looks so far: a frontal look is still wanted,
    # even a smaller one (its quality beats the turned looks' by far)
    frontal = track(5, 0, 0.2, width=40)
    assert aud.wants_classification([frontal], 0.2) == [0]
    aud.add_samples([frontal], demo([0.05, 0.9, 0.05], 0.2), 0.2)  # frontal: "female"
    assert person.gender == "female" and person.samples == 3 and person.frontal_seen
    assert abs(person.male_prob - 0.2) < 1e-6  # the turned looks are gone
    assert aud.wants_classification([track(5, 0, 0.3, width=200)], 0.3) == []  # cap now holds
    # a small, later frontal look counts for less than a big one
    aud2 = Audience("cam")
    aud2.add_samples([track(6, 0, 0.0, width=120)], demo([0.1, 0.8, 0.1], 0.3), 0.0)
    aud2.add_samples([track(6, 0, 0.1, width=30)], demo([0.1, 0.8, 0.1], 0.8), 0.1)
    assert aud2.people[6].gender == "female"  # the big look (P 0.3) outweighs the small one


def test_dwell_attention_and_a_counted_visit():
    aud = Audience("cam", AudienceConfig(min_attention_s=1.0, min_visit_s=0.5))
    changed = []
    for i in range(31):  # 3 s at 10 fps, looking at the display the whole time
        now = i * 0.1
        t = track(3, 0.0, now)
        if i == 0:
            aud.add_samples([t], demo([0.05, 0.9, 0.05], 0.1), now)
        changed.append(aud.update([t], [], now, 0.1 if i else 0.0))
    assert changed[0] and not any(changed[1:])  # one change: the person appeared
    person = aud.present()[0]
    assert person.dwell_s == 3.0 and person.attention_s >= 2.9 and person.watching
    assert aud.present_counts()["adult"]["female"] == 1
    assert aud.update([], [track(3, 0.0, 3.0)], 4.0, 0.1)  # track removed: visit ends
    report = aud.close_interval(4.0)
    assert report.unique_visitors["adult"]["female"] == 1 and report.watchers == 1
    assert report.dwell_s == 3.0 and aud.present() == []


def test_a_turned_away_passer_by_is_not_a_watcher_and_short_visits_do_not_count():
    aud = Audience("cam", AudienceConfig(min_visit_s=0.5))
    walker, glimpse = track(1, 0.0, 2.0, landmarks=TURNED), track(2, 1.8, 2.0)
    aud.add_samples(
        [walker, glimpse],
        Demographics(
            np.array([30, 30], np.float32),
            np.array([[0, 1, 0], [0, 1, 0]], np.float32),
            np.array([0.9, 0.9], np.float32),
        ),
        2.0,
    )
    aud.update([walker, glimpse], [], 2.0, 0.1)
    report = aud.close_interval(3.0, flush=True)
    assert report.unique_visitors["adult"]["male"] == 1  # the glimpse lasted 0.2 s
    assert report.unclassified == 1 and report.watchers == 0


def test_unsure_visitors_are_counted_as_unclassified():
    report = one_visitor(AudienceConfig(min_confidence=0.6), [0.35, 0.4, 0.25], 0.5)
    assert report.unclassified == 1
    assert total(report.unique_visitors) == 0


def test_an_unsure_gender_is_counted_as_gender_unknown():
    # Three adults whose fused P(male) ends at 0.9, 0.6 and 0.4 (two samples each):
    # with the default margin 0.15 the last two are counted, but under no gender.
    aud = Audience("cam", AudienceConfig())
    tracks = [track(i, 0.0, 2.0) for i in (1, 2, 3)]
    for now, p_male in ((1.0, (0.95, 0.5, 0.3)), (2.0, (0.8, 0.69, 0.49))):
        aud.add_samples(
            tracks,
            Demographics(
                np.full(3, 30, np.float32),
                np.tile(np.float32([0.05, 0.9, 0.05]), (3, 1)),
                np.array(p_male, np.float32),
            ),
            now,
        )
    aud.update(tracks, [], 2.0, 0.1)
    report = aud.close_interval(3.0, flush=True)
    assert report.unique_visitors["adult"] == {"female": 0, "male": 1}
    assert report.gender_unknown == {"child": 0, "adult": 2, "old": 0}
    assert report.unclassified == 0 and aud.totals().gender_unknown["adult"] == 2


def test_a_zero_gender_margin_always_picks_a_gender():
    report = one_visitor(AudienceConfig(gender_margin=0.0), [0.05, 0.9, 0.05], 0.52)
    assert report.unique_visitors["adult"]["male"] == 1
    assert sum(report.gender_unknown.values()) == 0
