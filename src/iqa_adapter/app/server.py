"""The web app: a Starlette application with the generate tab (``/``) and the subjective study (``/study/<name>``
for participants, ``/study/<name>/results`` for the experimenter), served by uvicorn (:func:`serve`).

JSON API, used by the pages and by scripts:

* ``GET /api/model``: the adapter's metrics (z and raw value at every percentile) and the default settings;
  ``POST /api/generate`` queues a request and answers its job; ``GET /api/jobs/<id>`` its progress and images;
  ``GET /api/jobs/<id>/<n>.png`` and ``.json`` an image and its sidecar.
* ``GET /api/study/<name>/next?participant=ID&source=PARAM``: the participant's current pair (left and right
  image URLs, position, total) or ``{"done": true}``; ``POST /api/study/<name>/vote`` with ``{participant,
  assignment, choice}`` stores the vote (committed before the answer) and answers the next pair;
  ``GET /api/study/<name>/image/<id>``, ``GET /api/study/<name>/report``, ``GET /study/<name>/votes.csv``.

Errors are JSON ``{"error": "..."}`` with status 400 (bad request) or 404 (unknown study, job or image).
"""

from __future__ import annotations

import html
from importlib import resources
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .generator import GenerationEngine, RequestError
from .store import StudyError, StudyStore, UnknownStudyError
from .study import figure_png, study_report, votes_csv

# URL parameters a participant's id is read from, first found first: ours, then Prolific's, MTurk's and others'
PARTICIPANT_PARAMETERS = ("participant", "PROLIFIC_PID", "workerId", "worker_id", "participant_id", "uid", "user_id")


def page(name: str) -> str:
    """The text of a page or script shipped in ``app/static``."""
    return (resources.files("iqa_adapter") / "app" / "static" / name).read_text(encoding="utf-8")


def _error(error: Exception, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=status)


def create_app(
    engine: GenerationEngine | None = None, store: StudyStore | None = None, results_token: str | None = None
) -> Starlette:
    """The app: the generate tab when ``engine`` is given, the studies of ``store`` when given; the results pages
    ask for ``?token=results_token`` when one is set."""

    def need_engine():
        if engine is None:
            raise StudyError("this server runs no generator (start `iqa-adapter app` without --no-generate)")
        return engine

    def need_store():
        if store is None:
            raise StudyError("this server serves no study database (start `iqa-adapter app --database FILE`)")
        return store

    def check_token(request: Request) -> None:
        if results_token is not None and request.query_params.get("token") != results_token:
            raise PermissionError("the results need ?token=... (the --results-token the server was started with)")

    async def index(request: Request) -> Response:
        if engine is None:
            names = need_store().study_names() if store is not None else []
            links = "".join(f'<li><a href="/study/{html.escape(n)}">{html.escape(n)}</a></li>' for n in names)
            return HTMLResponse(f"<!doctype html><title>iqa-adapter</title><h1>Studies</h1><ul>{links}</ul>")
        return HTMLResponse(page("generate.html"))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        media = {"js": "text/javascript", "css": "text/css"}.get(name.rsplit(".", 1)[-1])
        if media is None or "/" in name:
            return _error(FileNotFoundError(name), 404)
        try:
            return Response(page(name), media_type=media)
        except FileNotFoundError as error:
            return _error(error, 404)

    async def model(request: Request) -> Response:
        try:
            return JSONResponse(need_engine().info())
        except StudyError as error:
            return _error(error, 404)

    async def submit(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(RequestError("send the request as a JSON object"))
        try:
            return JSONResponse(need_engine().submit(body).describe())
        except (RequestError, StudyError) as error:
            return _error(error)

    async def job(request: Request) -> Response:
        try:
            return JSONResponse(need_engine().job(request.path_params["job"]).describe())
        except (RequestError, StudyError) as error:
            return _error(error, 404)

    async def job_file(request: Request) -> Response:
        try:
            found = need_engine().job(request.path_params["job"])
            index = int(request.path_params["index"])
            if not 0 <= index < len(found.labels):
                raise RequestError(f"job {found.id} has no image {index}")
        except (RequestError, StudyError) as error:
            return _error(error, 404)
        if request.path_params["kind"] == "png":
            return Response(found.images[index], media_type="image/png")
        return JSONResponse(found.sidecars[index])

    # ------------------------------------------------------------ study
    def study_id(request: Request) -> int:
        return need_store().study(request.path_params["name"])[0]

    async def participant_page(request: Request) -> Response:
        try:
            _, settings = need_store().study(request.path_params["name"])
        except StudyError as error:
            return HTMLResponse(f"<!doctype html><p>{html.escape(str(error))}</p>", status_code=404)
        text = page("study.html").replace("{{instructions}}", html.escape(settings.instructions))
        text = text.replace("{{parameters}}", ",".join(PARTICIPANT_PARAMETERS))
        return HTMLResponse(text.replace("{{study}}", html.escape(request.path_params["name"])))

    def _assignment_json(name: str, current) -> dict:
        if current is None:
            _, settings = store.study(name)
            return {"done": True, "completion_code": settings.completion_code}
        return {
            "done": False,
            "assignment": current.id,
            "left": f"/api/study/{quote(name, safe='')}/image/{current.left_image}",
            "right": f"/api/study/{quote(name, safe='')}/image/{current.right_image}",
            "position": current.position,
            "total": current.total,
        }

    def _participant(request: Request, identity: str, source: str) -> tuple[str, int, int]:
        name = request.path_params["name"]
        sid = study_id(request)
        return name, sid, need_store().participant(sid, identity, source)

    async def pair_answer(work) -> Response:
        """``work()`` (a vote and/or the next pair) in the thread pool, as JSON; an unknown study is a 404."""
        try:
            return JSONResponse(await run_in_threadpool(work))
        except UnknownStudyError as error:
            return _error(error, 404)
        except StudyError as error:
            return _error(error)

    async def next_pair(request: Request) -> Response:
        identity = request.query_params.get("participant", "")
        source = request.query_params.get("source", "participant")[:50]

        def work():
            name, sid, person = _participant(request, identity, source)
            return _assignment_json(name, store.next_assignment(sid, person))

        return await pair_answer(work)

    async def vote(request: Request) -> Response:
        try:
            body = await request.json()
            identity, assignment, choice = str(body["participant"]), int(body["assignment"]), str(body["choice"])
            if not 0 < assignment < 2**63:
                raise ValueError(assignment)
        except (ValueError, KeyError, TypeError):
            return _error(StudyError('send {"participant": ID, "assignment": N, "choice": "left"|"right"|"same"}'))
        source = str(body.get("source", "participant"))[:50]

        def work():
            name, sid, person = _participant(request, identity, source)
            store.vote(person, assignment, choice)  # committed before the next pair is chosen
            return _assignment_json(name, store.next_assignment(sid, person))

        return await pair_answer(work)

    async def image(request: Request) -> Response:
        try:
            data, media = await run_in_threadpool(
                need_store().image, study_id(request), int(request.path_params["image"])
            )
        except StudyError as error:
            return _error(error, 404)
        return Response(data, media_type=media, headers={"Cache-Control": "public, max-age=3600"})

    reports: dict[str, tuple[int, tuple]] = {}  # study -> (its number of votes, its report): one per new vote

    def _report(request: Request):
        check_token(request)
        name = request.path_params["name"]
        votes_now = need_store().vote_count(study_id(request))
        cached = reports.get(name)
        if cached is None or cached[0] != votes_now:
            cached = reports[name] = (votes_now, study_report(store, name, bootstrap_rounds=200))
        return cached[1]

    async def results(request: Request) -> tuple[tuple | None, Response | None]:
        """``((report, votes), None)``, or ``(None, the error's response)``: 404 unknown study, 403 wrong token."""
        try:
            return await run_in_threadpool(_report, request), None
        except StudyError as error:
            return None, _error(error, 404)
        except PermissionError as error:
            return None, _error(error, 403)

    async def report(request: Request) -> Response:
        found, error = await results(request)
        return error or JSONResponse(found[0])

    async def votes(request: Request) -> Response:
        found, error = await results(request)
        return error or PlainTextResponse(votes_csv(found[1]), media_type="text/csv")

    async def figure(request: Request) -> Response:
        found, error = await results(request)
        if error:
            return error
        png = await run_in_threadpool(figure_png, found[0], f"{request.path_params['figure']}.png")
        if png is None:
            return _error(StudyError("no such figure yet (figures appear with the first votes)"), 404)
        return Response(png, media_type="image/png")

    async def results_page(request: Request) -> Response:
        try:
            result, _ = await run_in_threadpool(_report, request)
        except StudyError as error:
            return HTMLResponse(f"<!doctype html><p>{html.escape(str(error))}</p>", status_code=404)
        except PermissionError as error:
            return HTMLResponse(f"<!doctype html><p>{html.escape(str(error))}</p>", status_code=403)
        return HTMLResponse(results_html(result, request.query_params.get("token")))

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/model", model),
        Route("/api/generate", submit, methods=["POST"]),
        Route("/api/jobs/{job}", job),
        Route("/api/jobs/{job}/{index:int}.{kind:str}", job_file),
        Route("/study/{name}", participant_page),
        Route("/study/{name}/results", results_page),
        Route("/study/{name}/votes.csv", votes),
        Route("/study/{name}/figures/{figure}.png", figure),
        Route("/api/study/{name}/next", next_pair),
        Route("/api/study/{name}/vote", vote, methods=["POST"]),
        Route("/api/study/{name}/image/{image:int}", image),
        Route("/api/study/{name}/report", report),
    ]
    return Starlette(routes=routes)


def results_html(report: dict, token: str | None) -> str:
    """The results page: counts, the win-rate table with Bradley-Terry intervals, the pairwise matrix, figures."""
    name, path = html.escape(report["study"]), html.escape(quote(report["study"], safe=""))
    query = html.escape("?" + urlencode({"token": token})) if token else ""
    conditions = [c for c in report["conditions"] if c in report["win_rate"]]
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{report['win_rate'][c]:.3f}</td><td>{report['vote_share'][c]:.3f}</td>"
        + (
            f"<td>{report['bradley_terry'][c]['score']:+.3f} [{report['bradley_terry'][c]['low']:+.3f}, "
            f"{report['bradley_terry'][c]['high']:+.3f}]</td>"
            if c in report["bradley_terry"]
            else "<td></td>"
        )
        + "</tr>"
        for c in conditions
    )
    header = "".join(f"<th>{html.escape(c)}</th>" for c in conditions)
    matrix = "".join(
        f"<tr><th>{html.escape(a)}</th>"
        + "".join(
            f"<td>{report['pairwise'].get(a, {}).get(b, float('nan')):.3f}</td>" if a != b else "<td>-</td>"
            for b in conditions
        )
        + "</tr>"
        for a in conditions
    )
    figures = "".join(
        f'<img alt="{figure}" src="/study/{path}/figures/{figure}.png{query}">'
        for figure in ("win_rates", "pairwise", "bradley_terry")
        if conditions
    )
    counts = (
        f"{report['participants']} participants ({report['participants_excluded']} excluded by the attention "
        f"checks), {report['votes_kept']} votes kept of {report['votes']}, {report['pairs_voted']} of "
        f"{report['pairs']} pairs voted, {report['pairs_with_enough_votes']} with at least "
        f"{report['settings']['votes_per_pair']} votes"
    )
    return page("results.html").format(
        name=name, path=path, counts=counts, rows=rows, header=header, matrix=matrix, figures=figures, query=query
    )


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
