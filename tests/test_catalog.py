"""The ad catalog: the shipped one is valid; mistakes name the catalog, the ad and the field."""

import datetime as dt
import shutil

import pytest

from edge.catalog import load_catalog
from edge.errors import ConfigError

from conftest import ROOT

CATALOG = ROOT / "ads" / "catalog.yaml"


def test_shipped_catalog_is_valid():
    catalog = load_catalog(CATALOG)
    assert catalog.default == "welcome" and catalog.family_safe == "family"
    women = catalog.ads["spring-collection"]
    assert women.targets("adult", "female") and not women.targets("adult", "male")
    assert not women.targets("child", "female")
    assert (women.campaign, women.advertiser) == ("spring-2026", "Store fashion")
    assert catalog.ads["welcome"].campaign == ""  # optional
    seniors = catalog.ads["senior-tuesdays"]
    assert seniors.schedule.allows(dt.datetime(2026, 11, 24, 9, 0))  # a Tuesday
    assert not seniors.schedule.allows(dt.datetime(2026, 11, 24, 21, 0))  # after hours
    assert not seniors.schedule.allows(dt.datetime(2026, 11, 26, 9, 0))  # Thursday


@pytest.fixture()
def catalog_dir(tmp_path):
    shutil.copytree(ROOT / "ads", tmp_path / "ads")
    return tmp_path / "ads"


def edit(catalog_dir, old, new):
    path = catalog_dir / "catalog.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def test_all_problems_are_reported_at_once(catalog_dir):
    edit(catalog_dir, "creatives/seniors.html", "creatives/nope.html")
    path = edit(catalog_dir, "genders: [male]", "genders: [men]")
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert "ad 'senior-tuesdays'" in str(info.value) and "ad 'grooming-week'" in str(info.value)


def test_missing_catalog_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read ad catalog"):
        load_catalog(tmp_path / "catalog.yaml")


@pytest.mark.parametrize(
    "old, new, needle",
    [
        (
            "creatives/seniors.html",
            "creatives/senior.html",
            "ad 'senior-tuesdays': field 'creative': file",
        ),
        (
            "age_classes: [old]",
            "age_classes: [elderly]",
            "ad 'senior-tuesdays': field 'targeting.age_classes' has 'elderly'",
        ),
        (
            "id: grooming-week",
            "id: spring-collection",
            "id 'spring-collection' is used by another ad",
        ),
        ('hours: "08:00-20:00"', 'hours: "25:00-20:00"', "field 'schedule.hours' is '25:00-20:00'"),
        ('hours: "08:00-20:00"', 'hours: "20:00-08:00"', "'20:00-08:00' ends before it starts"),
        ("days: [mon, tue]", "days: [monday]", "field 'schedule.days' has 'monday'"),
        ("duration_s: 15", "duration_s: -1", "field 'duration_s' is -1"),
        ("default: welcome", "default: hello", "'default' names ad 'hello', which is not in"),
        (
            "family_safe: family",
            "family_safe: spring-collection",
            "'family_safe' ad 'spring-collection' must not be targeted",
        ),
        ("    priority: 1", "    priorty: 1", "ad 'senior-tuesdays': unknown field 'priorty'"),
        (
            "targeting: {age_classes: [old]}",
            "targeting: {age_classes: 5}",
            "ad 'senior-tuesdays': field 'targeting.age_classes' is 5; give a list of names",
        ),
        (
            "genders: [male]",
            "genders: [{male: 1}]",
            "ad 'grooming-week': field 'targeting.genders' is [{'male': 1}]",
        ),
        ("days: [mon, tue]", "days: 3", "ad 'senior-tuesdays': field 'schedule.days' is 3"),
        ("default: welcome", "default: [welcome]", "'default' must name the ad to show"),
        ("duration_s: 15", "duration_s: .nan", "column 17: '.nan' is not a finite number"),
        ("    priority: 1", "    priority: 1\n    priority: 2", "key 'priority' is given twice"),
        ("    priority: 1", "    1: 2", "ad 'senior-tuesdays': unknown field '1'"),
    ],
)
def test_catalog_mistakes_name_the_file_ad_and_field(catalog_dir, old, new, needle):
    """Each mistake, wrong types included (exit 78, not a TypeError), names the file,
    the ad and the field."""
    path = edit(catalog_dir, old, new)
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert str(info.value).startswith(f"{path}: ") and needle in str(info.value)


@pytest.mark.slow
def test_any_value_of_any_type_in_any_ad_field_is_valid_or_a_config_error(catalog_dir):
    """The class of problem: every field (and the top-level keys) given values of every
    type; only ConfigError may come out."""
    import yaml

    path = catalog_dir / "catalog.yaml"
    shipped = yaml.safe_load(path.read_text())
    values = [
        None,
        "",
        "x",
        0,
        -3,
        2.5,
        True,
        [],
        {},
        [1],
        ["adult", 2],
        {"a": [1]},
        [{"a": 1}],
        "🙂",
    ]
    from edge.catalog import AD_KEYS

    # Every field the loader knows (a new one is tried too), and the nested ones.
    fields = [
        *sorted(AD_KEYS),
        "targeting.age_classes",
        "targeting.genders",
        "schedule.days",
        "schedule.hours",
        7,
    ]
    tried = 0
    for value in values:
        for top in ("default", "family_safe", "ads", "schema_version"):
            path.write_text(yaml.safe_dump({**shipped, top: value}))
            with only_config_errors():
                load_catalog(path)
            tried += 1
        for field in fields:
            data = yaml.safe_load(yaml.safe_dump(shipped))
            ad = data["ads"][4]
            head, _, rest = str(field).partition(".")
            if rest:
                ad[head] = {rest: value}
            else:
                ad[field] = value
            path.write_text(yaml.safe_dump(data))
            with only_config_errors():
                load_catalog(path)
            tried += 1
    assert tried > 200


class only_config_errors:
    """Many of these values are valid ('x' as a title, [] as targeting); whatever is not
    must come out as a ConfigError."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is None or issubclass(kind, ConfigError)


def unservable(catalog_dir):
    """Creatives the display player cannot serve, each set up on disk: (creative, needle)."""
    outside = catalog_dir.parent / "outside.html"
    outside.write_text("<p>outside</p>")
    (catalog_dir / "creatives" / ".hidden.html").write_text("<p>hidden</p>")
    (catalog_dir / ".secret").mkdir()
    (catalog_dir / ".secret" / "x.html").write_text("<p>x</p>")
    (catalog_dir / "creatives" / "link.html").symlink_to(outside)
    (catalog_dir / "creatives" / "folder.html").mkdir()
    (catalog_dir / "creatives" / "empty.png").write_bytes(b"")
    (catalog_dir / "creatives" / "flyer.pdf").write_bytes(b"%PDF-1.4")
    (catalog_dir / "creatives" / "notes.txt").write_text("notes")
    (catalog_dir / "creatives" / "app.js").write_text("alert(1)")
    return [
        (str(outside), "outside the catalog's folder"),
        ("../outside.html", "outside the catalog's folder"),
        ("creatives/link.html", "outside the catalog's folder"),
        ("/etc/hostname", "outside the catalog's folder"),
        ("catalog.yaml", "'.yaml'"),
        ("creatives/.hidden.html", "hidden"),
        (".secret/x.html", "hidden"),
        ("creatives/folder.html", "not a file"),
        ("creatives/empty.png", "empty"),
        ("creatives/flyer.pdf", "'.pdf'"),
        ("creatives/notes.txt", "'.txt'"),
        ("creatives/app.js", "'.js'"),
        ("creatives/nothing.html", "does not exist"),
        ("http://", "http:// or https:// URL with a host"),
        ("https://cdn.example.com/spring ad.html", "spaces"),
        ("https://cdn.example.com:port/x.html", "cannot be parsed"),
    ]


def test_creatives_the_player_cannot_serve_fail_the_catalog(catalog_dir):
    for creative, needle in unservable(catalog_dir):
        path = edit(catalog_dir, "creatives/seniors.html", creative)
        with pytest.raises(ConfigError) as info:
            load_catalog(path)
        message = str(info.value)
        assert "ad 'senior-tuesdays': field 'creative'" in message and needle in message, (
            creative,
            message,
        )
        edit(catalog_dir, creative, "creatives/seniors.html")
    load_catalog(catalog_dir / "catalog.yaml")  # back to valid


def test_every_catalog_creative_is_served_by_the_player(catalog_dir):
    """One rule: what load_catalog accepts, the player serves (edge/outputs/player_server.py)."""
    import cv2
    import numpy as np

    from edge import config as config_mod
    from edge.outputs.player_server import DisplayServer

    for name in ("a.png", "b.JPG", "c.webp", "d.gif"):
        ok, data = cv2.imencode(
            ".png" if name.endswith("png") else ".jpg", np.zeros((4, 4, 3), np.uint8)
        )
        (catalog_dir / "creatives" / name).write_bytes(data.tobytes())
    (catalog_dir / "creatives" / "e.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (catalog_dir / "creatives" / "f f.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    path = catalog_dir / "catalog.yaml"
    extra = "".join(
        f'\n  - {{id: x{i}, title: X, creative: "creatives/{n}", duration_s: 5}}'
        for i, n in enumerate(("a.png", "b.JPG", "c.webp", "d.gif", "e.svg", "f f.mp4"))
    )
    path.write_text(path.read_text() + extra + "\n")
    catalog = load_catalog(path)
    config = config_mod.Config()
    server = DisplayServer(config, catalog, port=0)
    for ad in catalog.ads.values():
        served = server.ad_file(catalog.creative_ref(ad))
        assert served is not None and served.samefile(ad.creative), ad.id


def test_title_length_is_capped(catalog_dir):
    path = edit(catalog_dir, "title: Senior Tuesdays", "title: " + "T" * 201)
    with pytest.raises(ConfigError, match="ad 'senior-tuesdays': field 'title' is longer than 200"):
        load_catalog(path)


def test_campaign_and_advertiser_must_be_short_names(catalog_dir):
    path = edit(catalog_dir, "campaign: spring-2026", "campaign: [spring]")
    with pytest.raises(
        ConfigError, match=r"ad 'spring-collection': field 'campaign' is \['spring'\]"
    ):
        load_catalog(path)
