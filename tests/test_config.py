"""Config loading: defaults, and errors that name the file and the key."""

import re

import pytest

from edge import config as config_mod
from edge.errors import EX_CONFIG, ConfigError

from conftest import ROOT, run_edge


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_config_is_valid_and_matches_defaults():
    loaded = config_mod.load(ROOT / "config.yaml")
    defaults = config_mod.Config()
    assert loaded.detector == defaults.detector
    assert loaded.classifier == defaults.classifier
    assert loaded.runtime == defaults.runtime


@pytest.mark.parametrize("text, needle", [
    ("detector:\n  bakend: centerface\n", "unknown key 'detector.bakend'"),
    ("detectr: {}\n", "unknown key 'detectr'"),
    ("detector:\n  score_threshold: high\n", "'detector.score_threshold' must be a number"),
    ("detector:\n  score_threshold: 1.5\n", "'detector.score_threshold' is 1.5; allowed range"),
    ("detector:\n  backend: mtcnn\n", "'detector.backend' is 'mtcnn'; choose one of"),
    ("detector:\n  backend: yunet\n", "'detector.model' must name the model file"),
    ("classifier:\n  child_below: 70\n", "'classifier.child_below' (70) must be below"),
    ("runtime:\n  providers: [cuda, rocm]\n", "'runtime.providers' has 'rocm'"),
    ("detector: [1, 2]\n", "'detector' must be a mapping"),
    ("detector:\n  min_face_px: true\n", "'detector.min_face_px' must be an integer"),
    ("detector: {input_width: 640\n", "not valid YAML"),
])
def test_bad_config_names_file_and_key(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_integer_accepted_for_number_and_relative_paths_resolve(tmp_path):
    cfg = config_mod.load(write(tmp_path, "detector:\n  score_threshold: 1\nmodels:\n  dir: m\n"))
    assert cfg.detector.score_threshold == 1.0
    assert cfg.resolve(cfg.models.dir) == tmp_path / "m"


def test_cli_exits_78_on_config_error(tmp_path):
    path = write(tmp_path, "detector:\n  bakend: x\n")
    result = run_edge("--config", str(path), "models", "verify")
    assert result.returncode == EX_CONFIG
    assert "unknown key 'detector.bakend'" in result.stderr


def test_missing_config_file_is_a_config_error(tmp_path):
    result = run_edge("--config", str(tmp_path / "nope.yaml"), "models", "verify")
    assert result.returncode == EX_CONFIG
    assert "nope.yaml: cannot read config" in result.stderr


def test_reference_lists_every_key():
    keys = [key for key, _, _ in config_mod.reference()]
    assert "detector.score_threshold" in keys and "classifier.old_from" in keys
    assert len(keys) == len(set(keys))


def readme_block(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"<!-- {name}:start -->\n") + len(f"<!-- {name}:start -->\n")
    return readme[start:readme.index(f"<!-- {name}:end -->")]


def test_readme_configuration_reference_is_current():
    """README's table is generated; a new or changed key must be regenerated there."""
    result = run_edge("config", "--reference")
    assert result.returncode == 0 and readme_block("config-reference") == result.stdout


def test_readme_topic_table_is_current():
    """README's MQTT topic table is generated from edge/topics.py."""
    result = run_edge("config", "--topics")
    assert result.returncode == 0 and readme_block("topics") == result.stdout
    assert result.stdout.count("\n| `") == 7  # one row per topic


def test_cameras_are_validated(tmp_path):
    ok = config_mod.load(write(tmp_path, "cameras:\n  - {id: door, source: /dev/video0}\n"
                                         "  - {id: aisle-2, source: rtsp://cam/stream, fps: 5}\n"))
    assert [c.id for c in ok.cameras] == ["door", "aisle-2"] and ok.cameras[1].fps == 5.0
    for text, needle in [
        ("cameras:\n  - {id: door}\n", "'cameras[0].source' is missing"),
        ("cameras:\n  - {id: a, source: x}\n  - {id: a, source: y}\n", "repeats camera id 'a'"),
        ("cameras:\n  - {id: 'front door', source: x}\n", "'cameras[0].id' is 'front door'"),
        ("cameras:\n  - {id: a, source: x, fsp: 3}\n", "unknown key 'cameras[0].fsp'"),
        ("cameras: {id: a}\n", "'cameras' must be a list"),
        ("tracker:\n  low_threshold: 0.9\n", "'tracker.low_threshold' must not exceed"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            config_mod.load(write(tmp_path, text))
