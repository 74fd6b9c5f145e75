"""Select stage: the Selector that chooses what each display shows, from the ad
catalog (edge/catalog.py) validated at start-up.

Ad selection is deterministic:
- A viewer counts once in view for min_dwell_s (someone walking past does not switch
  the display, and a label from the first frames is still unsteady), then weighs
  age-class confidence x (passerby_weight + (1 - passerby_weight)
  x min(1, attention_s / min_attention_s)); a watcher counts the full confidence.
- nobody: no viewer weight -> the catalog's default ad.
- children: each viewer adds P(child) x their attention weight to the children's
  weight, whatever their most likely class, because a child read as an adult with
  P(child) = 0.45 is still nearly a coin toss. Under the family_safe policy, when
  children hold more than child_share of the weight (or all of it) -> the family_safe
  ad. Under that policy children never pick the segment; under `target` they are a
  segment like any other.
- child guard: a viewer with P(child) >= child_guard never counts toward an adult or
  old segment (a missed child costs more than a missed adult: README "Ad selection").
  When nobody is left to target after that -> the family_safe ad, rule "children".
- The segment is the (age class, gender) with the most weight, each viewer counting
  age-class confidence x attention weight x gender confidence; ties go to the first
  in AGE_CLASSES, GENDERS order.
- targeting: the ads in schedule that target the segment (untargeted ads match
  anyone), highest priority only, rotated by smooth weighted round-robin on weight;
  the ad on screen is passed over while another is owed a turn.
- no-match: no such ad -> the default ad.
- An ad stays on screen for at least its duration_s, then the choice is made again
  and published only if it changes. The default ad shown to nobody gives way as
  soon as someone is there.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from edge.catalog import Ad, Catalog
from edge.config import SelectorConfig
from edge.records import AGE_CLASSES, GENDERS, Decision, Viewer

SEGMENTS = tuple((age, gender) for age in AGE_CLASSES for gender in GENDERS)  # tie order


@dataclass(frozen=True)
class AudienceWeights:
    """The weighed audience of one frame: what a decision is based on."""

    people: int
    watchers: int
    total: float  # summed viewer (attention) weight
    children_share: float  # summed P(child) x weight, over total
    segments: dict[tuple[str, str], float]  # (age class, gender) -> weight

    def summary(self) -> dict:
        """Counts only, never anything about one person."""
        weights = {
            f"{age}/{gender}": round(self.segments[(age, gender)], 2)
            for age, gender in SEGMENTS
            if (age, gender) in self.segments
        }
        return {
            "people": self.people,
            "watchers": self.watchers,
            "weights": weights,
            "children_share": round(self.children_share, 2),
        }


class Selector:
    """Chooses what one display shows from the audience in front of its camera."""

    def __init__(
        self, display_id: str, catalog: Catalog, settings: SelectorConfig, min_attention_s: float
    ) -> None:
        self.display_id = display_id
        self.catalog = catalog
        self.settings = settings
        self.min_attention_s = min_attention_s
        self._creatives = {ad.id: catalog.creative_ref(ad) for ad in catalog.ads.values()}
        # Rotation credit per group of competing ads, so each group's rotation
        # carries on where it left off when its audience comes back.
        self._credit: dict[tuple[str, ...], dict[str, float]] = {}
        self._current: Decision | None = None
        self._held_until = -math.inf
        self._filler = False  # the default ad is on screen because nobody was there

    @property
    def current(self) -> Decision | None:
        """What is on screen now."""
        return self._current

    def decide(
        self, viewers: list[Viewer], now: float, wall: dt.datetime | None = None
    ) -> Decision | None:
        """Called every frame (cheap!). Returns a Decision when what the display should
        show changes; None otherwise. `now` is epoch seconds (frame time), `wall` the
        local datetime used for schedules (default: datetime.fromtimestamp(now))."""
        if now < self._held_until and not (
            self._filler and any(self._attention_weight(v) > 0 for v in viewers)
        ):
            return None
        audience = self._weigh(viewers)
        ad, rule, segment = self._choose(audience, wall or dt.datetime.fromtimestamp(now))
        self._held_until = now + ad.duration_s
        self._filler = rule == "nobody"
        if self._current is not None and ad.id == self._current.ad:
            return None
        self._current = Decision(
            display=self.display_id,
            ad=ad.id,
            title=ad.title,
            creative=self._creatives[ad.id],
            duration_s=ad.duration_s,
            rule=rule,
            segment=None if segment is None else {"age_class": segment[0], "gender": segment[1]},
            audience=audience.summary(),
            time=now,
            campaign=ad.campaign,
            advertiser=ad.advertiser,
        )
        return self._current

    def _weigh(self, viewers: list[Viewer]) -> AudienceWeights:
        total = children = 0.0
        segments: dict[tuple[str, str], float] = {}
        for viewer in viewers:
            weight = self._attention_weight(viewer)
            if weight <= 0:
                continue
            total += weight
            # The children's weight is each viewer's P(child), not a vote of their most
            # likely class; it leaves gender out, so a child whose gender is unclear
            # still counts fully.
            children += weight * viewer.child_prob
            if viewer.age_class != "child" and viewer.child_prob >= self.settings.child_guard:
                continue  # perhaps a child: never in an adult or old segment
            # An unsure class or gender guess counts less toward its segment.
            key = (viewer.age_class, viewer.gender)
            segments[key] = (
                segments.get(key, 0.0)
                + weight * viewer.age_class_confidence * viewer.gender_confidence
            )
        return AudienceWeights(
            len(viewers),
            sum(v.watching for v in viewers),
            total,
            children / total if total else 0.0,
            segments,
        )

    def _attention_weight(self, viewer: Viewer) -> float:
        """How much one viewer counts: 0 before min_dwell_s, passerby_weight for someone
        who has not looked, up to 1 for someone who looked for min_attention_s."""
        if viewer.dwell_s < self.settings.min_dwell_s:
            return 0.0
        passerby = self.settings.passerby_weight
        if viewer.watching or self.min_attention_s <= 0:
            attention = 1.0
        else:
            attention = min(1.0, viewer.attention_s / self.min_attention_s)
        return passerby + (1 - passerby) * attention

    def _choose(
        self, audience: AudienceWeights, wall: dt.datetime
    ) -> tuple[Ad, str, tuple[str, str] | None]:
        ads = self.catalog.ads
        if audience.total <= 0:
            return ads[self.catalog.default], "nobody", None
        family_safe = self.settings.children == "family_safe"
        if family_safe and (
            audience.children_share > self.settings.child_share or audience.children_share >= 1
        ):
            return ads[self.catalog.family_safe], "children", None
        ranked = [
            s for s in SEGMENTS if s in audience.segments and not (family_safe and s[0] == "child")
        ]
        if not ranked:  # everyone present is perhaps a child (child_guard)
            return ads[self.catalog.family_safe], "children", None
        segment = max(ranked, key=audience.segments.__getitem__)  # first of equals wins
        candidates = self._candidates(segment, wall)
        if not candidates:
            return ads[self.catalog.default], "no-match", segment
        return self._rotate(candidates), "targeting", segment

    def _candidates(self, segment: tuple[str, str], wall: dt.datetime) -> list[Ad]:
        reserved = (self.catalog.default, self.catalog.family_safe)
        matching = [
            ad
            for ad in self.catalog.ads.values()
            if ad.id not in reserved and ad.targets(*segment) and ad.schedule.allows(wall)
        ]
        top = max((ad.priority for ad in matching), default=0)
        return [ad for ad in matching if ad.priority == top]

    def _rotate(self, group: list[Ad]) -> Ad:
        """Smooth weighted round-robin (as nginx): every ad earns its weight each turn,
        the richest is shown and pays the group's total weight."""
        credit = self._credit.setdefault(tuple(ad.id for ad in group), {ad.id: 0.0 for ad in group})
        for ad in group:
            credit[ad.id] += ad.weight
        pick = max(group, key=lambda ad: credit[ad.id])
        on_screen = self._current.ad if self._current else None
        owed = [ad for ad in group if ad.id != on_screen and credit[ad.id] > 0]
        if pick.id == on_screen and owed:
            # Only an ad in credit may jump the queue, so no ad falls behind for good
            # and the shares still follow the weights.
            pick = max(owed, key=lambda ad: credit[ad.id])
        credit[pick.id] -= sum(ad.weight for ad in group)
        return pick
