"""``iqa-adapter app`` (the web app) and ``iqa-adapter study create|report`` (the subjective study)."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

APP_MODULES = ("starlette", "uvicorn", "sqlalchemy")


def require_app_extra(modules=APP_MODULES) -> None:
    """Raise, naming the fix, when the app's optional dependencies are not installed."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(f"the web app and studies need {', '.join(missing)}: pip install 'iqa-adapter[app]'")


def cmd_app(args) -> None:
    require_app_extra()
    from ..runtime import apply_threads
    from .generator import GenerationEngine
    from .server import create_app, serve
    from .store import StudyStore

    check_can_listen(args.host, args.port)  # before loading a model
    store = StudyStore(args.database, create=False) if args.database else None
    engine = None
    if not args.no_generate:
        apply_threads(args.threads, toy=args.base is None)
        engine = GenerationEngine(
            args.base, args.adapter, args.device, args.dtype, revision=args.revision, subfolder=args.subfolder
        )
    if engine is None and store is None:
        raise ValueError("--no-generate serves only studies: give --database")
    where = f"http://{args.host}:{args.port}"
    if engine is not None:
        print(f"generate tab: {where}/")
    if store is not None:
        for name in store.study_names():
            print(f"study {name!r}: participants {where}/study/{name}  results {where}/study/{name}/results")
    serve(create_app(engine, store, args.results_token), args.host, args.port)


def check_can_listen(host: str, port: int) -> None:
    """Raise, in one line, when ``host:port`` cannot be listened on (taken, or not an address of this machine)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind((host, port))
    except OSError as error:
        raise OSError(
            f"cannot serve on {host}:{port}: {error.strerror or error}; choose another --port or --host"
        ) from None


def cmd_study_create(args) -> None:
    require_app_extra(("sqlalchemy",))
    from ..cli_common import comma_list
    from .store import StudySettings, StudyStore
    from .study import create_study

    settings = StudySettings(
        conditions=tuple(comma_list(args.conditions)),
        votes_per_pair=args.votes_per_pair,
        pairs_per_participant=args.pairs_per_participant,
        attention_checks=args.attention_checks,
        max_failed_checks=args.max_failed_checks,
        completion_code=args.completion_code,
    )
    if args.attention_checks and not args.attention_pairs:
        raise ValueError("--attention-checks needs --attention-pairs above 0 (or set --attention-checks 0)")
    counts = create_study(
        StudyStore(args.database),
        args.name,
        args.images,
        settings,
        attention_pairs=args.attention_pairs,
        max_keys=args.max_images,
        seed=args.seed,
    )
    print(json.dumps(counts))
    for entry in counts["skipped"]:
        print(f"skipped {entry['condition']}/{entry['key']} (and its prompt and seed): {entry['reason']}")
    print(f"serve it: iqa-adapter app --database {args.database} (participants at /study/{args.name})")


def cmd_study_report(args) -> None:
    require_app_extra(("sqlalchemy",))
    from .store import StudyStore
    from .study import study_report, write_study_report

    store = StudyStore(args.database, create=False)
    name = args.name or _only_study(store, args.database)
    report, votes = study_report(store, name, bootstrap_rounds=args.bootstrap, seed=args.seed)
    written = write_study_report(report, votes, args.out)
    print(
        f"{report['participants_kept']} participants kept ({report['participants_excluded']} excluded by the "
        f"attention checks), {report['votes_kept']} votes on {report['pairs_voted']} pairs"
    )
    for condition in report["conditions"]:
        if condition in report["win_rate"]:
            bt = report["bradley_terry"][condition]
            print(
                f"  {condition:24s} win rate {report['win_rate'][condition]:.3f}  vote share "
                f"{report['vote_share'][condition]:.3f}  Bradley-Terry {bt['score']:+.3f} "
                f"[{bt['low']:+.3f}, {bt['high']:+.3f}]"
            )
    print("wrote " + ", ".join(str(path) for path in written))


def _only_study(store, database: str) -> str:
    names = store.study_names()
    if len(names) != 1:
        raise ValueError(
            f"{database} holds {'no study' if not names else 'studies ' + ', '.join(names)}: "
            + ("make one with `iqa-adapter study create`" if not names else "choose one with --name")
        )
    return names[0]


def add_commands(commands) -> None:
    from ..cli_common import add_adapter_location_options
    from ..runtime import add_threads_option
    from ..validation import check_int, cli_type, non_negative_int, positive_int, seed

    port_number = cli_type(check_int, 0, 65535, parse=int)

    app = commands.add_parser(
        "app",
        help="the web app: generate with quality sliders, and serve subjective studies",
        description="Serve the generate tab (on the embedded toy world unless --base/--adapter) and, with "
        "--database, the studies it holds. Needs pip install 'iqa-adapter[app]'.",
    )
    app.add_argument("--base", default=None, help="base model (folder or hub id); default: the embedded toy world")
    app.add_argument(
        "--adapter",
        default=None,
        help="adapter (folder or hub id); without --base: the toy world's main adapter, or toy:NAME for another of "
        "its own",
    )
    add_adapter_location_options(app)
    app.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    app.add_argument("--dtype", default=None, help="fp16, bf16 or fp32 (default: fp16 on CUDA, else fp32)")
    add_threads_option(app)
    app.add_argument("--database", default=None, help="study database: a SQLite file or a SQLAlchemy URL")
    app.add_argument("--no-generate", action="store_true", help="serve only the studies (no model loaded)")
    app.add_argument("--host", default="127.0.0.1")
    app.add_argument("--port", type=port_number, default=7860)
    app.add_argument("--results-token", default=None, help="the results pages then ask for ?token=THIS (default: open)")
    app.set_defaults(func=cmd_app)

    study = commands.add_parser("study", help="create or analyse a side-by-side subjective study")
    actions = study.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create",
        help="a study of image pairs from an evaluate or pairs output",
        description="Store every pair of --conditions on the same prompt and seed (the same file name in each "
        "condition folder), plus attention checks, in a study database.",
    )
    create.add_argument("--images", required=True, help="an evaluate output (images/<condition>/...) or pairs output")
    create.add_argument("--conditions", required=True, help="condition folders to compare, e.g. base,toy/p1,toy/p99")
    create.add_argument("--database", required=True, help="a SQLite file (created) or a SQLAlchemy URL")
    create.add_argument("--name", default="study", help="the study's name (its URL: /study/NAME)")
    create.add_argument("--votes-per-pair", type=positive_int, default=10, help="participants per pair (paper: 10)")
    create.add_argument(
        "--pairs-per-participant", type=positive_int, default=22, help="compared pairs each (paper: 22)"
    )
    create.add_argument("--attention-checks", type=non_negative_int, default=3, help="attention checks each (paper: 3)")
    create.add_argument(
        "--max-failed-checks", type=non_negative_int, default=0, help="failed checks allowed (paper: 0)"
    )
    create.add_argument(
        "--attention-pairs", type=non_negative_int, default=20, help="attention-check pairs in the study"
    )
    create.add_argument("--max-images", type=positive_int, default=None, help="at most this many prompt-seed images")
    create.add_argument("--completion-code", default=None, help="shown at the end (crowdsourcing platforms)")
    create.add_argument("--seed", type=seed, default=0)
    create.set_defaults(func=cmd_study_create)

    report = actions.add_parser("report", help="win rates, pairwise matrix, Bradley-Terry, votes as CSV, figures")
    report.add_argument("--database", required=True)
    report.add_argument("--name", default=None, help="the study (default: the only one in the database)")
    report.add_argument("--out", type=Path, required=True, help="folder for report.json, votes.csv and figures")
    report.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap rounds of the intervals")
    report.add_argument("--seed", type=seed, default=0)
    report.set_defaults(func=cmd_study_report)
