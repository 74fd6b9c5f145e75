"""The select stage's decisions: who is watching picks the ad, and the screen does not flicker."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import yaml

from edge.catalog import load_catalog
from edge.config import SelectorConfig
from edge.pipeline.select import Selector
from edge.records import Viewer

from conftest import ROOT

SHIPPED = ROOT / "ads" / "catalog.yaml"
THURSDAY = dt.datetime(2026, 11, 26, 9, 0)  # senior-tuesdays is off
TUESDAY = dt.datetime(2026, 11, 24, 9, 0)


def viewer(
    age_class: str = "adult",
    gender: str = "female",
    *,
    watching: bool = True,
    attention_s: float | None = None,
    age_conf: float = 1.0,
    gender_conf: float = 1.0,
    dwell_s: float = 3.0,
    child_prob: float | None = None,
) -> Viewer:
    if attention_s is None:
        attention_s = 2.0 if watching else 0.0
    if child_prob is None:  # the class's confidence for a child, else nothing left for child
        child_prob = age_conf if age_class == "child" else 0.0
    return Viewer(
        age_class,
        gender,
        age_conf,
        gender_conf,
        dwell_s=dwell_s,
        attention_s=attention_s,
        watching=watching,
        child_prob=child_prob,
    )


def selector(catalog=SHIPPED, **settings) -> Selector:
    return Selector(
        "window", load_catalog(catalog), SelectorConfig(**settings), min_attention_s=1.0
    )


def write_catalog(tmp_path, *ads: dict):
    """A catalog with welcome/family plus `ads`, their creatives written beside it."""
    base = [
        {"id": "welcome", "title": "Welcome", "creative": "c/welcome.html", "duration_s": 10},
        {"id": "family", "title": "Family", "creative": "c/family.html", "duration_s": 10},
    ]
    entries = base + [
        {"title": ad["id"], "creative": f"c/{ad['id']}.html", "duration_s": 10, **ad} for ad in ads
    ]
    (tmp_path / "c").mkdir()
    for entry in entries:
        if not entry["creative"].startswith("https://"):
            (tmp_path / entry["creative"]).write_text("<html></html>")
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"default": "welcome", "family_safe": "family", "ads": entries}))
    return path


def turns(sel: Selector, viewers: list[Viewer], n: int, every: float = 10.0):
    """Ads on screen after each of n hold expiries, and the decisions published."""
    shown, published = [], []
    for i in range(n):
        decision = sel.decide(viewers, i * every, THURSDAY)
        shown.append(sel.current.ad)
        if decision is not None:
            published.append(decision.ad)
    return shown, published


def test_nobody_gets_the_default_ad_at_once():
    decision = selector().decide([], 100.0, THURSDAY)
    assert (decision.ad, decision.rule, decision.segment) == ("welcome", "nobody", None)
    assert decision.display == "window" and decision.time == 100.0
    assert decision.audience == {"people": 0, "watchers": 0, "weights": {}, "children_share": 0.0}


def test_adult_women_get_the_women_ad():
    decision = selector().decide([viewer(), viewer()], 0.0, THURSDAY)
    assert (decision.ad, decision.rule) == ("spring-collection", "targeting")
    assert decision.segment == {"age_class": "adult", "gender": "female"}
    assert decision.title == "Spring collection" and decision.duration_s == 12
    assert decision.creative == "creatives/women-adult.html"


def test_watchers_outweigh_a_passerby():
    audience = [viewer(), viewer(), viewer(gender="male", watching=False)]
    decision = selector().decide(audience, 0.0, THURSDAY)
    assert decision.ad == "spring-collection"
    assert decision.audience["weights"] == {"adult/female": 2.0, "adult/male": 0.3}
    assert decision.audience["people"] == 3 and decision.audience["watchers"] == 2


def test_passerby_weighting_beats_the_head_count():
    audience = [viewer(watching=False), viewer(watching=False), viewer(gender="male")]
    decision = selector().decide(audience, 0.0, THURSDAY)
    assert decision.ad == "grooming-week"
    assert decision.audience["weights"] == {"adult/female": 0.6, "adult/male": 1.0}


def test_weight_formula():
    # 0.9 x (0.3 + 0.7 x 0.5 / 1.0) = 0.585, x gender confidence 0.8 = 0.468
    audience = [viewer(watching=False, attention_s=0.5, age_conf=0.9, gender_conf=0.8)]
    decision = selector().decide(audience, 0.0, THURSDAY)
    assert decision.audience["weights"] == {"adult/female": 0.47}


def test_an_unsure_gender_counts_less():
    audience = [viewer(gender_conf=0.55), viewer(gender="male", gender_conf=0.95)]
    assert selector().decide(audience, 0.0, THURSDAY).ad == "grooming-week"


def test_nobody_looking_with_no_passerby_weight_is_nobody():
    decision = selector(passerby_weight=0.0).decide([viewer(watching=False)], 0.0, THURSDAY)
    assert decision.rule == "nobody" and decision.audience["people"] == 1


def test_children_dominating_get_the_family_ad():
    audience = [viewer("child"), viewer("child", "male"), viewer()]
    decision = selector().decide(audience, 0.0, THURSDAY)
    assert (decision.ad, decision.rule, decision.segment) == ("family", "children", None)
    assert decision.audience["children_share"] == 0.67


def test_children_alone_get_the_family_ad_whatever_the_share():
    decision = selector(child_share=1.0).decide([viewer("child")], 0.0, THURSDAY)
    assert (decision.ad, decision.rule) == ("family", "children")


def test_a_few_children_leave_the_adults_targeted():
    audience = [viewer("child", watching=False), viewer()]
    decision = selector().decide(audience, 0.0, THURSDAY)
    assert decision.ad == "spring-collection" and decision.audience["children_share"] == 0.23


def test_the_children_share_weighs_each_person_by_their_child_probability():
    # Two people read as adults who are nearly as likely children, and one likely child:
    # by most-likely class only 0.6 of 1.7 is child (0.35), by probability (0.48 + 0.48
    # + 0.6) / 3 = 0.52, more than child_share: the family-safe ad.
    audience = [
        viewer(age_conf=0.52, child_prob=0.48),
        viewer(age_conf=0.52, child_prob=0.48),
        viewer("child", age_conf=0.6),
    ]
    decision = selector(child_guard=1.0).decide(audience, 0.0, THURSDAY)
    assert (decision.ad, decision.rule) == ("family", "children")
    assert decision.audience["children_share"] == 0.52


def test_the_children_weight_follows_attention():
    # The same probabilities, but the likely child only walks past (weight 0.3):
    # (0.48 + 0.48 + 0.3 x 0.6) / 2.3 = 0.50, not more than child_share.
    audience = [
        viewer(age_conf=0.52, child_prob=0.48),
        viewer(age_conf=0.52, child_prob=0.48),
        viewer("child", age_conf=0.6, watching=False),
    ]
    decision = selector(child_guard=1.0).decide(audience, 0.0, THURSDAY)
    assert decision.rule == "targeting" and decision.audience["children_share"] == 0.5


def test_a_possible_child_is_never_counted_in_an_adult_segment():
    # Two women read as adults but with P(child) 0.35 outweigh one man; the guard keeps
    # them out of adult/female, so the man's segment is targeted.
    women = [viewer(age_conf=0.6, child_prob=0.35), viewer(age_conf=0.6, child_prob=0.35)]
    man = viewer(gender="male", age_conf=0.9, child_prob=0.05)
    unguarded = selector(child_guard=1.0).decide(women + [man], 0.0, THURSDAY)
    assert unguarded.segment == {"age_class": "adult", "gender": "female"}
    decision = selector().decide(women + [man], 0.0, THURSDAY)
    assert decision.segment == {"age_class": "adult", "gender": "male"}
    assert decision.ad == "grooming-week"
    assert decision.audience["weights"] == {"adult/male": 0.9}


def test_only_possible_children_get_the_family_ad():
    for policy in ("family_safe", "target"):
        decision = selector(children=policy).decide(
            [viewer(gender="male", age_conf=0.55, child_prob=0.4)], 0.0, THURSDAY
        )
        assert (decision.ad, decision.rule, decision.segment) == ("family", "children", None)


def test_children_are_never_targeted_under_family_safe(tmp_path):
    catalog = write_catalog(
        tmp_path,
        {"id": "toys", "targeting": {"age_classes": ["child"]}},
        {"id": "women", "targeting": {"age_classes": ["adult"], "genders": ["female"]}},
    )
    audience = [viewer("child"), viewer("child"), viewer()]  # children the largest segment
    decision = selector(catalog, child_share=0.9).decide(audience, 0.0, THURSDAY)
    assert decision.ad == "women"
    assert decision.segment == {"age_class": "adult", "gender": "female"}


def test_target_policy_can_choose_a_child_ad(tmp_path):
    catalog = write_catalog(tmp_path, {"id": "toys", "targeting": {"age_classes": ["child"]}})
    audience = [viewer("child"), viewer("child"), viewer()]
    decision = selector(catalog, children="target").decide(audience, 0.0, THURSDAY)
    assert (decision.ad, decision.rule) == ("toys", "targeting")
    assert decision.segment == {"age_class": "child", "gender": "female"}


def test_schedule_decides_senior_tuesdays():
    seniors = [viewer("old")]
    on = selector().decide(seniors, 0.0, TUESDAY)
    assert (on.ad, on.rule) == ("senior-tuesdays", "targeting")
    for wall in (TUESDAY.replace(hour=21), THURSDAY):
        off = selector().decide(seniors, 0.0, wall)
        assert (off.ad, off.rule) == ("welcome", "no-match")
        assert off.segment == {"age_class": "old", "gender": "female"}


def test_wall_defaults_to_local_time_of_now():
    decision = selector().decide([viewer("old")], TUESDAY.timestamp())
    assert decision.ad == "senior-tuesdays"


def test_highest_priority_wins_and_general_ads_match_anyone(tmp_path):
    women = {"age_classes": ["adult"], "genders": ["female"]}
    catalog = write_catalog(
        tmp_path,
        {"id": "sale"},
        {"id": "women", "targeting": women},
        {"id": "vip", "targeting": women, "priority": 2},
    )
    shown, _ = turns(selector(catalog), [viewer()], 4)
    assert shown == ["vip"] * 4  # no rotation into lower priorities
    assert selector(catalog).decide([viewer(gender="male")], 0.0, THURSDAY).ad == "sale"


def test_rotation_alternates_between_equal_ads(tmp_path):
    catalog = write_catalog(
        tmp_path,
        {"id": "a", "targeting": {"genders": ["female"]}},
        {"id": "b", "targeting": {"genders": ["female"]}},
    )
    shown, published = turns(selector(catalog), [viewer()], 6)
    assert shown == published == ["a", "b", "a", "b", "a", "b"]


def test_rotation_follows_weights(tmp_path):
    female = {"genders": ["female"]}
    catalog = write_catalog(
        tmp_path, {"id": "a", "weight": 2, "targeting": female}, {"id": "b", "targeting": female}
    )
    shown, published = turns(selector(catalog), [viewer()], 6)
    assert Counter(shown) == {"a": 4, "b": 2}
    # a keeps the screen for its second turn: republishing it would restart the creative
    assert all(x != y for x, y in zip(published, published[1:], strict=False))
    assert len(published) == 5


def test_rotation_never_repeats_when_weights_allow(tmp_path):
    # Plain smooth round-robin gives a,b,c,a,a,b,c,a here; the on-screen ad steps aside.
    female = {"genders": ["female"]}
    catalog = write_catalog(
        tmp_path,
        {"id": "a", "weight": 2, "targeting": female},
        {"id": "b", "targeting": female},
        {"id": "c", "targeting": female},
    )
    shown, published = turns(selector(catalog), [viewer()], 8)
    assert Counter(shown) == {"a": 4, "b": 2, "c": 2}
    assert shown == published and all(x != y for x, y in zip(shown, shown[1:], strict=False))


def test_hold_keeps_the_ad_for_its_duration():
    sel = selector()
    assert sel.decide([viewer()], 0.0, THURSDAY).ad == "spring-collection"  # 12 s
    men = [viewer(gender="male")]
    assert sel.decide(men, 5.0, THURSDAY) is None
    assert sel.decide([], 11.9, THURSDAY) is None
    assert sel.current.ad == "spring-collection"
    decision = sel.decide(men, 12.0, THURSDAY)
    assert decision.ad == "grooming-week" and decision.time == 12.0


def test_the_default_ad_gives_way_when_someone_arrives():
    sel = selector()
    assert sel.decide([], 0.0, THURSDAY).rule == "nobody"
    assert sel.decide([], 1.0, THURSDAY) is None
    assert sel.decide([viewer()], 2.0, THURSDAY).ad == "spring-collection"


def test_the_default_ad_for_no_match_is_held():
    sel = selector()
    assert sel.decide([viewer("old", "male")], 0.0, THURSDAY).rule == "no-match"
    assert sel.decide([viewer()], 2.0, THURSDAY) is None
    assert sel.decide([viewer()], 10.0, THURSDAY).ad == "spring-collection"


def test_decisions_only_on_change_and_the_hold_restarts():
    sel = selector()
    first = sel.decide([viewer()], 0.0, THURSDAY)
    assert sel.decide([viewer()], 12.0, THURSDAY) is None  # same ad again: nothing to publish
    assert sel.decide([viewer(gender="male")], 20.0, THURSDAY) is None  # held until 24
    assert sel.current is first
    assert sel.decide([viewer(gender="male")], 24.0, THURSDAY).ad == "grooming-week"


def test_creative_paths_are_relative_and_urls_unchanged(tmp_path):
    url = "https://cdn.example.com/spring.html"
    catalog = write_catalog(
        tmp_path,
        {"id": "web", "creative": url, "targeting": {"genders": ["female"]}},
        {"id": "local", "targeting": {"genders": ["male"]}},
    )
    assert selector(catalog).decide([viewer()], 0.0, THURSDAY).creative == url
    local = selector(catalog).decide([viewer(gender="male")], 0.0, THURSDAY)
    assert local.creative == "c/local.html"
    assert selector(catalog).decide([], 0.0, THURSDAY).creative == "c/welcome.html"


def test_someone_just_arrived_does_not_switch_the_display_yet():
    sel = selector()
    assert sel.decide([], 0.0, THURSDAY).ad == "welcome"
    # In view for 0.2 s: a label from the first frames, maybe someone walking past.
    assert sel.decide([viewer("adult", "male", dwell_s=0.2, watching=False)], 0.2, THURSDAY) is None
    decision = sel.decide([viewer("adult", "male", dwell_s=1.2, watching=False)], 1.2, THURSDAY)
    assert decision.ad == "grooming-week" and decision.rule == "targeting"
