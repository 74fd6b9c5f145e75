"""The `edge` command: one subcommand per job an operator or developer runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from edge import __version__
from edge import config as config_mod
from edge.errors import EX_DATAERR, ConfigError, EdgeError, InputError

log = logging.getLogger("edge")


def under_journald() -> bool:
    """stderr goes to the journal: systemd sets JOURNAL_STREAM to its device and inode
    ("DEV:INODE"). Compared with stderr's own, as systemd advises, so a program started
    from a service with stderr sent elsewhere (a file, a pipe) is not taken for it."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        info = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):  # unset, malformed, or no real stderr
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


def setup_logging(level: str = "info") -> None:
    # journald stamps each line itself; everywhere else (a terminal, a file, nohup, a
    # container's log) the line carries its own time.
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if under_journald()
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)


def cmd_models(args, cfg) -> int:
    from edge.inference import modelstore

    models_dir = cfg.resolve(cfg.models.dir)
    specs = modelstore.load_manifest(models_dir)
    if args.action == "list":
        names = modelstore.configured_models(cfg)
        backend = cfg.classifier.backend + (
            f" ({', '.join(cfg.classifier.members)})"
            if cfg.classifier.backend == "ensemble"
            else ""
        )
        print(f"detector {cfg.detector.backend}, classifier {backend}:")
        if args.all:  # every network the manifest pins (not the files they are built from)
            names = [n for n, spec in specs.items() if spec.role != "source"]
        for name in names:
            spec = specs[name]
            used = "" if not args.all or name in modelstore.configured_models(cfg) else "  (unused)"
            print(
                f"{spec.role:10s} {name:10s} {spec.file}{used}\n"
                f"           {modelstore.provenance(spec)}"
            )
        for key, path in (
            ("detector.model", cfg.detector.model),
            ("classifier.model", cfg.classifier.model),
        ):
            if path and (
                key.startswith("detector")
                and cfg.detector.backend != "centerface"
                or key.startswith("classifier")
                and "insightface" in ([cfg.classifier.backend] + cfg.classifier.members)
            ):
                print(
                    f"{'own':10s} {key:10s} {path}\n           licence and training data: "
                    f'the operator\'s (see README "Models")'
                )
        if cfg.classifier.backend not in ("cydral", "cydral-fairface"):
            print(
                "classifier.backend: cydral-fairface (CC0 weights, CC BY data) is the choice "
                'where training-data provenance matters (README "Models")'
            )
        return 0
    if args.action == "fetch":
        written = modelstore.fetch(specs, models_dir, force=args.force)
        print(
            f"{len(written)} model file(s) downloaded, "
            f"{len(specs) - len(written)} already present and verified"
        )
    failures = 0
    for spec in specs.values():
        try:
            path = modelstore.verify(spec, models_dir)
            print(f"OK    {spec.name:10s} {path} ({spec.license})")
        except EdgeError as exc:
            failures += 1
            print(f"FAIL  {spec.name:10s} {exc}")
    return 1 if failures else 0


def cmd_analyze(args, cfg) -> int:
    from edge.pipeline.analyze import Claim, FaceAnalyzer, photo_result, read_image
    from edge.redact import redact

    claim = None
    if args.claimed_age is not None or args.claimed_gender is not None:
        claim = Claim(args.claimed_age, args.claimed_gender)
    analyzer = FaceAnalyzer(cfg)
    failed = 0
    for name in args.images:
        shown = redact(name)  # a URL given by mistake may carry a password
        try:
            frame = read_image(name)
        except InputError as exc:
            failed += 1
            log.error("%s", exc)
            print(json.dumps({"image": shown, "error": str(exc)}), flush=True)
            continue
        result = {"image": shown, **photo_result(*analyzer(frame), claim, cfg)}
        print(json.dumps(result), flush=True)
    if failed:
        log.error("%d of %d image(s) could not be analysed", failed, len(args.images))
        return EX_DATAERR
    return 0


def cmd_eval(args, cfg) -> int:
    from edge.commands import evaluate
    from edge.pipeline.analyze import FaceAnalyzer

    csv_path = Path(args.labels)
    labels = evaluate.read_labels(csv_path)
    where = [evaluate.parse_selector(text, "--where") for text in args.where]
    exclude = [evaluate.parse_selector(text, "--exclude") for text in args.exclude]
    labels = evaluate.select(labels, csv_path, where, exclude)
    by = [c.strip() for text in args.by for c in text.split(",") if c.strip()]
    balance_by = [c.strip() for c in (args.balance_by or "").split(",") if c.strip()]
    for column in (*by, *balance_by):
        evaluate.check_column(labels, column, csv_path)
    analyzer = FaceAnalyzer(cfg)
    predictions = evaluate.predict(analyzer, labels, progress=not args.no_progress)
    result = evaluate.fairness(
        labels,
        predictions,
        cfg.classifier.child_below,
        cfg.classifier.old_from,
        by=by,
        balance_by=balance_by,
        chance_rounds=args.chance_rounds,
    )
    result["settings"] = {
        "detector": cfg.detector.backend,
        "classifier": cfg.classifier.backend,
        "flip_tta": cfg.classifier.flip_tta,
        "calibrated": cfg.classifier.calibrated,
        "labels": args.labels,
        "where": args.where,
        "exclude": args.exclude,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def cmd_run(args, cfg) -> int:
    from edge import nativelog
    from edge.redact import safe_name
    from edge.service import Service

    # libjpeg's and FFmpeg's own stderr lines, repeated per frame, are rate-limited; the
    # log handler is set up again so that our lines bypass that filter.
    nativelog.install()
    setup_logging(cfg.log_level)
    offline = bool(args.source) and not args.realtime
    if args.source:
        # The file stands in for the first configured camera, so the displays that
        # follow it still work (the demo); without cameras it is named after the file
        # (a URL after its path, never its user, password or host: the id is in topics).
        stem = safe_name(args.source)
        first = cfg.cameras[0] if cfg.cameras else None
        camera = config_mod.CameraConfig(
            id=first.id if first else stem,
            name=first.name if first else stem,
            source=args.source,
            loop=args.loop,
        )
        cfg = dataclasses.replace(
            cfg,
            cameras=[camera],
            displays=[d for d in cfg.displays if d.camera == camera.id],
        )
    if not cfg.cameras:
        raise ConfigError(
            f"{args.config or '(defaults)'}: no cameras configured; add "
            f"'cameras' to the config or pass --source"
        )
    from edge.outputs.sinks import assemble

    service = Service(cfg, [], offline=offline)  # the models first: their errors come first
    service.sinks = assemble(
        cfg,
        jsonl=args.jsonl,
        offline=offline,
        keep_history=args.store,
        on_override=service.overridden,
    )
    service.install_signal_handlers()
    return service.run(duration_s=args.duration)


def start_player(cfg, port: int | None = None):
    from edge.outputs.sinks import display_player

    return display_player(cfg, port).start()


def cmd_display(args, cfg) -> int:
    import signal
    import threading

    if not cfg.displays:
        raise ConfigError(
            f"{args.config or '(defaults)'}: no displays configured; add 'displays' to the config"
        )
    if not cfg.mqtt.enabled:
        raise ConfigError(
            f"{args.config or '(defaults)'}: 'mqtt.enabled' is false; the "
            f"player follows the displays' content topics on the broker"
        )
    if not cfg.player.port and args.port is None:
        raise ConfigError(
            f"{args.config or '(defaults)'}: 'player.port' is 0 (off); set it or pass --port"
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    player = start_player(cfg, port=args.port)
    from edge.outputs.dashboard import Dashboard

    if cfg.dashboard.enabled:
        player.dashboard = Dashboard(cfg, live=False)  # history only: no pipeline here
    try:
        stop.wait()
    finally:
        player.stop()
    return 0


def cmd_serve(args, cfg) -> int:
    import signal
    import threading

    from edge.outputs.notify import Notifier
    from edge.photo_server import PhotoService, load_key, require_key_off_loopback
    from edge.pipeline.analyze import FaceAnalyzer

    key = load_key(cfg)
    require_key_off_loopback(cfg.serve.listen, key)  # before the models take seconds to load
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    service = PhotoService(cfg, FaceAnalyzer(cfg), port=args.port, key=key).start()
    notifier = Notifier()
    log.info(
        "photo check API: %s/api/v1/analyze, page %s/check (%s)",
        service.url,
        service.url,
        "API key required" if key else "no API key: loopback only",
    )
    notifier.ready(f"serving photo checks on port {service.port}")
    try:
        stop.wait()
    finally:
        notifier.stopping()
        service.stop()
        notifier.close()
    return 0


def cmd_bench(args, cfg) -> int:
    from edge.commands import bench

    # The parser names each option after bench.main's keyword (`dest`).
    return bench.main(cfg, **{name: getattr(args, name) for name in bench.OPTIONS})


def cmd_check(args, cfg) -> int:
    import time

    started = time.monotonic()  # the installer waits for the imports too
    from edge.commands import check

    # check loads the config itself, so an invalid one is reported as a FAIL line.
    return check.main(args.check_config or args.config, started)


def cmd_preview(args, cfg) -> int:
    from edge.commands import preview

    return preview.main(cfg, args.camera, Path(args.out), args.seconds, args.config or "(defaults)")


def cmd_report(args, cfg) -> int:
    from edge.commands import report
    from edge.outputs.reporting import Span
    from edge.outputs.store import FILENAME

    stores = [s for given in args.store or [] for s in given.split(",") if s] or None
    return report.main(
        None if args.db else cfg.state_path() / FILENAME,
        span=Span(args.start, args.end),
        by=args.by,
        camera=args.camera,
        display=args.display,
        fmt=args.format,
        ad=args.ad,
        store=cfg.mqtt.store_id,
        db=args.db,
        stores=stores,
    )


def _date_arg(end: bool):
    """The date as given, once it parses: each store reads it in its own zone."""

    def parse(text: str) -> str:
        from edge.outputs.reporting import parse_date

        try:
            parse_date(text, end=end)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return parse


def cmd_config(args, cfg) -> int:
    if args.topics:
        from edge.outputs.topics import reference

        print(reference())
    elif args.events:
        from edge import events

        print(events.reference())
    elif args.reference:
        print(config_mod.reference_table())
    else:
        print(f"{args.config or '(defaults)'}: configuration is valid")
    return 0


def cmd_hq(args, cfg) -> int:
    """The head office's ingest (edge/hq/): its own config file, not config.yaml."""
    from edge.hq import config as hq_config

    if args.reference:
        print(hq_config.reference())
        return 0
    from edge.hq.service import run

    hq = hq_config.load(args.hq_config)
    setup_logging(hq.log_level)
    return run(hq)


def finite(text: str) -> float:
    """A number for a command-line option; nan and inf would pass every range check."""
    import math

    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


finite.__name__ = "number"  # argparse says "invalid number value: 'nan'"


def count(text: str) -> int:
    """A whole number of zero or more for a command-line option."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


count.__name__ = "count"  # argparse says "invalid count value: '-3'"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    parser.add_argument("--config", "-c", help="config file (default: built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("analyze", help="demographics of every face in photos, one JSON line each")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--claimed-age", type=finite, help="age the person claims (profile check)")
    p.add_argument(
        "--claimed-gender",
        choices=("female", "male"),
        help="gender the person claims (profile check)",
    )
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("eval", help="accuracy on a labelled set (CSV file,age,gender)")
    p.add_argument("labels", metavar="LABELS.csv")
    p.add_argument("--out", help="also write the metrics JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COL=V[,V]",
        help="only rows whose column has one of these values (e.g. split=val); repeatable",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="COL=V[,V]",
        help="leave out rows whose column has one of these values (e.g. age_group=10-19)",
    )
    p.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="COLUMN",
        help="metrics per value of a label column (e.g. race, age_group) and the spread "
        "between the best and worst group; repeatable or comma-separated",
    )
    p.add_argument(
        "--balance-by",
        metavar="COL[,COL]",
        help="weigh every cell of these columns the same (e.g. age_group,gender) and "
        "report the worst cell",
    )
    p.add_argument(
        "--chance-rounds",
        type=count,
        default=200,
        metavar="N",
        help="with --by: shuffle the column's values N times (within --balance-by cells) "
        "to show how big each spread is by chance alone; 0: skip",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "models",
        help="download (fetch) or re-check (verify) model files, or "
        "list the configured ones with licence and training data",
    )
    p.add_argument("action", choices=("fetch", "verify", "list"))
    p.add_argument("--force", action="store_true", help="fetch: download even if present")
    p.add_argument(
        "--all", action="store_true", help="list: every model of the manifest, not only the used"
    )
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("run", help="the real-time service: cameras in, audience events out")
    p.add_argument(
        "--source",
        help="analyse this file, folder or URL instead of the configured "
        "cameras (offline: every frame, no drops, file time)",
    )
    p.add_argument("--loop", action="store_true", help="with --source: start again at the end")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="with --source: read at the file's frame rate, dropping frames "
        "when behind, as with a live camera",
    )
    p.add_argument(
        "--duration",
        type=finite,
        metavar="S",
        help="stop cleanly after S seconds (demos, soak runs)",
    )
    p.add_argument(
        "--jsonl",
        action="store_true",
        help="write events as JSON lines on stdout (no broker needed)",
    )
    p.add_argument(
        "--store",
        action="store_true",
        help="with --source: also write the counts and plays to the audience "
        "store (live runs always do, when store.enabled)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("display", help="serve the display player alone (edge run serves it too)")
    p.add_argument(
        "--port", type=int, help="listen on this port instead of player.port (0: any free port)"
    )
    p.set_defaults(func=cmd_display)

    p = sub.add_parser(
        "serve", help="the photo check API and its page (POST /api/v1/analyze, /check)"
    )
    p.add_argument(
        "--port", type=int, help="listen on this port instead of serve.port (0: any free port)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help="frames/s and latency: full pipeline, detector only, naive")
    p.add_argument("--source", help="video file or GIF to run on (looped)")
    p.add_argument("--size", help="resize frames to WIDTHxHEIGHT first, e.g. 1280x720")
    p.add_argument("--seconds", type=finite, default=10.0, help="length of each measurement")
    p.add_argument(
        "--json", dest="json_path", metavar="FILE", help="also write the figures as JSON"
    )
    p.add_argument(
        "--cameras",
        type=int,
        default=1,
        metavar="N",
        help="run N copies of the source side by side through one service",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="run on CUDA and report GPU memory; fails in one line without a GPU",
    )
    p.add_argument(
        "--idle-share",
        type=float,
        default=0.0,
        metavar="P",
        help="share of the time (0 to below 1) each camera sees an empty, still "
        "scene, as in a store most of the day",
    )
    p.add_argument(
        "--no-gating",
        dest="gating",
        action="store_false",
        help="detect every frame (cameras' motion gating and tracked_detect_fps "
        "off), for comparison",
    )
    p.add_argument(
        "--crowd",
        type=int,
        metavar="N",
        help="instead: N faces (from the sample group photo) come into view at once, "
        "at --size (1280x720); tick latency and the time until every face is "
        "classified, within --seconds",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "check",
        help="installer's check: config, catalog, models, cameras, "
        "broker, GPU; one OK/WARN/FAIL line each",
    )
    p.add_argument(
        "--config",
        "-c",
        dest="check_config",
        metavar="FILE",
        help="config file to check (or give --config before the command)",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "preview",
        help="one annotated JPEG from a camera, for aiming it (shows people: delete it afterwards)",
    )
    p.add_argument(
        "--config",
        "-c",
        default=argparse.SUPPRESS,
        help="config file (or give --config before the command)",
    )
    p.add_argument("--camera", required=True, metavar="ID", help="id of a configured camera")
    p.add_argument("--out", required=True, metavar="FILE.jpg", help="where to write the JPEG")
    p.add_argument(
        "--seconds",
        type=finite,
        default=2.0,
        metavar="S",
        help="run the pipeline this long first, so faces are tracked and classified (default 2)",
    )
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser(
        "report", help="visitors per hour or day and audience per ad, from the audience store"
    )
    p.add_argument(
        "--from",
        dest="start",
        type=_date_arg(False),
        metavar="DATE",
        help="from this date (YYYY-MM-DD, or with THH:MM), each store's time zone",
    )
    p.add_argument(
        "--to",
        dest="end",
        type=_date_arg(True),
        metavar="DATE",
        help="up to this date, inclusive (a date and time: exclusive)",
    )
    p.add_argument(
        "--by",
        choices=("hour", "day", "campaign", "ad", "store"),
        default="day",
        help="period (day); campaign: plays per campaign of the catalog, visitors per day; "
        "ad: as day; store: visitors per store (with --db)",
    )
    p.add_argument("--camera", metavar="ID", help="only this camera")
    p.add_argument("--display", metavar="ID", help="only this display's plays")
    p.add_argument("--ad", metavar="ID", help="only this ad's plays")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument(
        "--db",
        metavar="URL",
        help="head office's PostgreSQL (postgresql://user@host/db), every store's records; "
        "its password from EDGE_HQ_DB_PASSWORD, PGPASSWORD or ~/.pgpass, never the URL",
    )
    p.add_argument(
        "--store",
        action="append",
        metavar="ID",
        help="only this store (repeat it, or a comma list)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("hq", help="head office: ingest every store's MQTT messages into PostgreSQL")
    p.add_argument("hq_config", nargs="?", metavar="HQ_YAML", help="hq.yaml (default: defaults)")
    p.add_argument("--reference", action="store_true", help="print hq.yaml's keys as a table")
    p.set_defaults(func=cmd_hq)

    p = sub.add_parser("config", help="validate a config file, or print the key reference")
    p.add_argument("--reference", action="store_true", help="print every key as a table")
    p.add_argument("--topics", action="store_true", help="print the MQTT topics as a table")
    p.add_argument(
        "--events", action="store_true", help="print the events of `edge run` as a table"
    )
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.func is cmd_check:  # check reports a bad config as one of its FAIL lines
            return cmd_check(args, None)
        cfg = config_mod.load(args.config)
        setup_logging(cfg.log_level)
        return args.func(args, cfg)
    except EdgeError as exc:
        log.error("%s", exc)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
