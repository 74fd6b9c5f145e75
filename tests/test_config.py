"""Config loading: defaults, and errors that name the file and the key."""

import dataclasses
import re

import pytest

from edge import config as config_mod
from edge.errors import EX_CONFIG, ConfigError

from conftest import ROOT, run_edge, unstamped


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


@pytest.mark.parametrize(
    "text, needle",
    [
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
    ],
)
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


def test_every_config_section_is_frozen():
    """A loaded config is never changed in place: code that needs other settings
    copies it (dataclasses.replace), so a new section must be frozen too."""
    sections = [
        c
        for c in vars(config_mod).values()
        if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__ == "edge.config"
    ]
    assert config_mod.Config in sections and config_mod.CameraConfig in sections
    assert [c.__name__ for c in sections if not c.__dataclass_params__.frozen] == []
    cfg = config_mod.load(ROOT / "config.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cameras[0].source = "/dev/video1"


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


def readme_block(name: str, file: str = "README.md") -> str:
    readme = (ROOT / file).read_text()
    start = readme.index(f"<!-- {name}:start -->\n") + len(f"<!-- {name}:start -->\n")
    return readme[start : readme.index(f"<!-- {name}:end -->")]


def test_readme_configuration_reference_is_current():
    """docs/reference.md's table is generated; a new or changed key must be regenerated
    there."""
    result = run_edge("config", "--reference")
    assert result.returncode == 0
    assert readme_block("config-reference", "docs/reference.md") == result.stdout


def test_readme_topic_table_is_current():
    """docs/reference.md's MQTT topic table is generated from edge/outputs/topics.py."""
    result = run_edge("config", "--topics")
    assert result.returncode == 0 and readme_block("topics", "docs/reference.md") == result.stdout
    assert result.stdout.count("\n| `") == 7  # one row per topic


def test_readme_event_table_is_current():
    """README's event table is generated from the classes of edge/events.py."""
    result = run_edge("config", "--events")
    assert result.returncode == 0 and readme_block("events") == result.stdout
    assert result.stdout.count("\n| `") == 8  # one row per event type


def test_cameras_are_validated(tmp_path):
    ok = config_mod.load(
        write(
            tmp_path,
            "cameras:\n  - {id: door, source: /dev/video0}\n"
            "  - {id: aisle-2, source: rtsp://cam/stream, fps: 5}\n",
        )
    )
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


# -- type mistakes: exit 78 with the file and key, never a traceback (issue 12 item 8) --

TYPE_MISTAKES = [
    (b"mqtt: {enabled: true, host: ''}\n", "'mqtt.host' must not be empty"),
    (b"mqtt: {enabled: true, host: 'mqtt://broker'}\n", "'mqtt.host' is 'mqtt://broker'"),
    (
        b"mqtt:\n  enabled: true\n  tls: {enabled: true, ca_file: missing-ca.pem}\n",
        "'mqtt.tls.ca_file' is 'missing-ca.pem': no such file",
    ),
    (b'log_level: "caf\xe9"\n', "config is not UTF-8 text (line 1"),
    (b"detector:\n\tinput_width: 640\n", "config is not valid YAML: line 2, column 1:"),
    (b"detector: {score_threshold: .nan}\n", "line 1, column 29: '.nan' is not a finite number"),
    (b"audience:\n  interval_s: .inf\n", "line 2, column 15: '.inf' is not a finite number"),
    (b"stats: {interval_s: -.Inf}\n", "'-.Inf' is not a finite number"),
    (
        b"detector: {input_width: 640}\ndetector: {input_width: 320}\n",
        "line 2, column 1: key 'detector' is given twice (also on line 1)",
    ),
    (b"mqtt:\n  port: 1883\n  host: a\n  port: 1884\n", "key 'port' is given twice"),
    (
        b"cameras:\n  - {id: door, source: 0}\n",
        "'cameras[0].source' must be a string, got 0; quote it: '0'",
    ),
    (b"player: {listen: 'not an address'}\n", "'player.listen' is 'not an address': not a host"),
    (b"player: {listen: '127.0.0.1:8080'}\n", "the port has its own key"),
    (b"player: {port: 70000}\n", "'player.port' is 70000; allowed range 0..65535"),
    (b"player: {listen: ''}\n", "'player.listen' must not be empty"),
    (b"models: {dir: ' '}\n", "'models.dir' must not be empty"),
    (b"[1, 2]\n", "'(top level)' must be a mapping"),
    (b"1: 2\n", "unknown key '1'"),
    (b"cameras:\n  - 7\n", "'cameras[0]' must be a mapping, got an integer"),
]


@pytest.mark.parametrize("text, needle", TYPE_MISTAKES)
def test_type_mistakes_exit_78_with_file_and_key(tmp_path, text, needle):
    path = tmp_path / "config.yaml"
    path.write_bytes(text)
    result = run_edge("--config", str(path), "config")
    assert result.returncode == EX_CONFIG, result.stderr
    assert "Traceback" not in result.stderr
    lines = [unstamped(line) for line in result.stderr.strip().splitlines()]
    assert len(lines) == 1, lines  # one line, the file first (after the time)
    assert lines[0].startswith(f"ERROR edge: {path}: ")
    assert needle in lines[0]


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        """
cameras:
  - {id: door, source: 0, fps: 1000}
  - 7
  - {id: door, source: x}
displays:
  - {id: d, camera: door}
mqtt: {host: "", port: 0}
classifier: {child_below: young, old_from: 10}
detectr: {}
""",
    )
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and message.count(str(path)) == 1
    for needle in [
        "'cameras[0].source' must be a string, got 0; quote it",
        "'cameras[0].fps' is 1000.0; allowed range",
        "'cameras[1]' must be a mapping",
        "'cameras[2].id' repeats camera id 'door'",
        "'mqtt.host' must not be empty",
        "'mqtt.port' is 0",
        "'classifier.child_below' must be a number",
        "unknown key 'detectr'",
    ]:
        assert needle in message, needle
    # A cross-check on a value already rejected would only confuse: child_below is
    # left at its default, which is not what the file says.
    assert "must be below 'classifier.old_from'" not in message


HOSTILE_VALUES = [
    None,
    "",
    "x",
    0,
    -1,
    70000,
    1.5,
    -0.0,
    1e300,
    True,
    [],
    {},
    [1],
    ["a", 1],
    {"a": 1},
    {"nested": {"deeper": [None]}},
    "0",
    "🙂" * 3,
]


def _nested(key: str, value):
    """{'mqtt': {'tls': {'ca_file': value}}} for 'mqtt.tls.ca_file'; list items as one."""
    head, _, rest = key.partition(".")
    if head.endswith("[]"):
        return {head[:-2]: [_nested(rest, value) if rest else value]}
    return {head: _nested(rest, value) if rest else value}


@pytest.mark.slow
def test_any_value_of_any_type_gives_a_config_error_or_a_config(tmp_path):
    """The class of problem, not the examples: every key with values of every type. Only
    ConfigError may come out (exit 78), never a TypeError or AttributeError."""
    import yaml

    path = tmp_path / "config.yaml"
    tried = 0
    for key, _, _ in config_mod.reference():
        for value in HOSTILE_VALUES:
            path.write_text(yaml.safe_dump(_nested(key, value)))
            try:
                config_mod.load(path)
            except ConfigError as exc:
                assert str(exc).startswith(f"{path}: ")
            tried += 1
    assert tried > 400
