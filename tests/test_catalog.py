"""The ad catalog: the shipped one is valid; mistakes name the catalog, the ad and the field."""

import datetime as dt
import shutil

import pytest

from edge.errors import ConfigError
from edge.select import load_catalog

from conftest import ROOT

CATALOG = ROOT / "ads" / "catalog.yaml"


def test_shipped_catalog_is_valid():
    catalog = load_catalog(CATALOG)
    assert catalog.default == "welcome" and catalog.family_safe == "family"
    women = catalog.ads["spring-collection"]
    assert women.targets("adult", "female") and not women.targets("adult", "male")
    assert not women.targets("child", "female")
    seniors = catalog.ads["senior-tuesdays"]
    assert seniors.schedule.allows(dt.datetime(2026, 11, 24, 9, 0))       # a Tuesday
    assert not seniors.schedule.allows(dt.datetime(2026, 11, 24, 21, 0))  # after hours
    assert not seniors.schedule.allows(dt.datetime(2026, 11, 26, 9, 0))   # Thursday


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


@pytest.mark.parametrize("old, new, needle", [
    ("creatives/seniors.html", "creatives/senior.html",
     "ad 'senior-tuesdays': field 'creative': file"),
    ("age_classes: [old]", "age_classes: [elderly]",
     "ad 'senior-tuesdays': field 'targeting.age_classes' has 'elderly'"),
    ("id: grooming-week", "id: spring-collection", "id 'spring-collection' is used by another ad"),
    ('hours: "08:00-20:00"', 'hours: "25:00-20:00"', "field 'schedule.hours' is '25:00-20:00'"),
    ('hours: "08:00-20:00"', 'hours: "20:00-08:00"', "'20:00-08:00' ends before it starts"),
    ("days: [mon, tue]", "days: [monday]", "field 'schedule.days' has 'monday'"),
    ("duration_s: 15", "duration_s: -1", "field 'duration_s' is -1"),
    ("default: welcome", "default: hello", "'default' names ad 'hello', which is not in"),
    ("family_safe: family", "family_safe: spring-collection",
     "'family_safe' ad 'spring-collection' must not be targeted"),
    ("    priority: 1", "    priorty: 1", "ad 'senior-tuesdays': unknown field 'priorty'"),
])
def test_catalog_errors_name_the_ad_and_field(catalog_dir, old, new, needle):
    path = edit(catalog_dir, old, new)
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_all_problems_are_reported_at_once(catalog_dir):
    edit(catalog_dir, "creatives/seniors.html", "creatives/nope.html")
    path = edit(catalog_dir, "genders: [male]", "genders: [men]")
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert "ad 'senior-tuesdays'" in str(info.value) and "ad 'grooming-week'" in str(info.value)


def test_missing_catalog_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read ad catalog"):
        load_catalog(tmp_path / "catalog.yaml")
