"""The generate tab's engine: one base pipeline and one adapter, jobs run one at a time in a worker thread, with
their progress in UNet steps, their images as PNG bytes and each image's JSON sidecar (every setting needed to
make it again)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from PIL import Image

from ..images import open_image
from ..validation import check_int, check_number, check_seed

KEPT_JOBS = 32  # finished jobs whose images stay in memory for download
SWEEP_PERCENTILES = (1, 10, 25, 50, 75, 90, 99)


class RequestError(ValueError):
    """A generation request the app refuses; the message names the field and the valid values."""


@dataclass
class Job:
    """One generation request: its state (queued, running, done, failed), progress and results."""

    id: str
    request: dict
    state: str = "queued"
    step: int = 0
    total_steps: int = 1
    error: str | None = None
    images: list[bytes] = field(default_factory=list)
    sidecars: list[dict] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    seconds: float | None = None

    def describe(self) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "step": self.step,
            "total_steps": self.total_steps,
            "error": self.error,
            "seconds": self.seconds,
            "images": [
                {
                    "url": f"/api/jobs/{self.id}/{index}.png",
                    "sidecar": f"/api/jobs/{self.id}/{index}.json",
                    "label": label,
                }
                for index, label in enumerate(self.labels)
            ],
        }


class GenerationEngine:
    """Generate with ``base`` and ``adapter`` (folders or hub ids; None: the embedded toy world's)."""

    def __init__(
        self,
        base: str | None = None,
        adapter: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        revision: str | None = None,
        subfolder: str | None = None,
    ) -> None:
        import torch

        from ..adapter import IQAAdapter
        from ..cli_common import (
            DEFAULT_GUIDANCE,
            DEFAULT_STEPS,
            TOY_ADAPTER_PREFIX,
            TOY_GUIDANCE,
            TOY_STEPS,
            refuse_toy_adapters,
            resolve_toy_adapter,
            torch_dtype,
        )
        from ..hub import is_local
        from ..pipelines import load_pipeline
        from ..runtime import resolve_device

        toy = base is None
        # what the page shows: the toy world's parts by name, not by their folders in site-packages
        self.base_name, self.adapter_name = base or "toy", adapter or f"{TOY_ADAPTER_PREFIX}main"
        if toy:
            from ..toy.world import shipped_world

            world = shipped_world().check()
            base, adapter = str(world.base), resolve_toy_adapter(world, adapter) if adapter else str(world.adapter)
        elif adapter is None:
            raise RequestError("give --adapter with --base")
        else:
            refuse_toy_adapters([adapter])
        self.adapter = IQAAdapter.from_pretrained(
            adapter, revision=None if is_local(adapter) else revision, subfolder=subfolder
        )
        self.device = resolve_device(device)
        self.pipe = load_pipeline(base, self.device, torch_dtype(dtype, self.device))
        self.pipe.set_progress_bar_config(disable=True)
        self.adapter.attach(self.pipe)
        self.defaults = {
            "steps": TOY_STEPS if toy else DEFAULT_STEPS,
            "guidance": TOY_GUIDANCE if toy else DEFAULT_GUIDANCE,
            "scale": self.adapter.config.default_scale,
        }
        self.toy = toy
        self._torch = torch
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: list[Job] = []
        self._wake = threading.Condition()
        self._numbers = itertools.count(1)
        threading.Thread(target=self._work, name="generation", daemon=True).start()

    # ------------------------------------------------------------ what the page shows
    def info(self) -> dict:
        """The adapter's metrics with z and raw values at every percentile (for the sliders), and defaults."""
        metrics = []
        if self.adapter.config.condition == "scores":
            for stats in self.adapter.config.metrics:
                table = []
                for percentile in range(1, 100):
                    try:
                        raw = stats.raw_from_percentile(percentile)
                    except ValueError:
                        continue
                    table.append({"percentile": percentile, "raw": raw, "z": stats.z_from_raw(raw)})
                metrics.append({"name": stats.name, "higher_is_better": stats.higher_is_better, "table": table})
        return {
            "base": self.base_name,
            "adapter": self.adapter_name,
            "condition": self.adapter.config.condition,
            "metrics": metrics,
            "defaults": self.defaults,
            "toy": self.toy,
            "sweep_percentiles": list(SWEEP_PERCENTILES),
        }

    # ------------------------------------------------------------ jobs
    def submit(self, request: dict) -> Job:
        """Check ``request`` (see :meth:`_checked`) and queue it; the job to poll."""
        job = Job(f"job{next(self._numbers)}", self._checked(request))
        with self._wake:
            self._jobs[job.id] = job
            while len(self._jobs) > KEPT_JOBS:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest].state in ("queued", "running"):
                    break
                del self._jobs[oldest]
            self._queue.append(job)
            self._wake.notify()
        return job

    def job(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise RequestError(
                f"no job {job_id!r} (finished jobs are kept for the last {KEPT_JOBS} requests)"
            ) from None

    def _checked(self, request: dict) -> dict:
        """The request with defaults filled in: prompt, negative_prompt, qualities {metric: percentile}, scale,
        negative_quality (None or K), seed, steps, guidance, sweep (None or a metric), reference (a data URL)."""
        if not isinstance(request, dict):
            raise RequestError("send a JSON object")
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError("prompt: give a non-empty text")
        try:
            checked = {
                "prompt": prompt.strip(),
                "negative_prompt": str(request.get("negative_prompt") or "") or None,
                "scale": check_number("scale", request.get("scale", self.defaults["scale"]), 0.0),
                "seed": check_seed("seed", request.get("seed", 0)),
                "steps": check_int("steps", request.get("steps", self.defaults["steps"]), 1, 200),
                "guidance": check_number("guidance", request.get("guidance", self.defaults["guidance"]), 0.0),
                "negative_quality": None,
                "sweep": None,
            }
            if request.get("negative_quality") not in (None, "", False):
                checked["negative_quality"] = check_number("negative_quality", request["negative_quality"], 0.0)
        except (TypeError, ValueError) as error:
            raise RequestError(str(error)) from None
        if self.adapter.config.condition == "reference":
            checked["reference"] = self._reference_image(request.get("reference"))
            return checked
        names = [stats.name for stats in self.adapter.config.metrics]
        qualities = request.get("qualities") or {}
        if not isinstance(qualities, dict) or set(qualities) - set(names):
            raise RequestError(f"qualities: a percentile for each of the adapter's metrics {names}")
        checked["qualities"] = {}
        for name in names:
            try:
                checked["qualities"][name] = check_int(f"qualities.{name}", qualities.get(name, 99), 1, 99)
            except (TypeError, ValueError) as error:
                raise RequestError(str(error)) from None
        sweep = request.get("sweep")
        if sweep not in (None, ""):
            if sweep not in names:
                raise RequestError(f"sweep: one of the adapter's metrics {names}, got {sweep!r}")
            checked["sweep"] = sweep
        return checked

    @staticmethod
    def _reference_image(data_url) -> Image.Image:
        if not isinstance(data_url, str) or "," not in data_url:
            raise RequestError("reference: this is a reference-based adapter; upload a reference image")
        try:
            return open_image(base64.b64decode(data_url.split(",", 1)[1]), name="the uploaded reference").convert("RGB")
        except ValueError as error:
            raise RequestError(f"reference: {error}") from None

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                job = self._queue.pop(0)
            job.state = "running"
            started = time.perf_counter()
            try:
                self._run(job)
                job.state = "done"
            except Exception as error:  # a failed job reports its error to the page; the server keeps serving
                job.state, job.error = "failed", f"{type(error).__name__}: {error}"
            job.seconds = round(time.perf_counter() - started, 2)

    def _run(self, job: Job) -> None:
        from ..generation import generate, sweep_qualities

        request = job.request
        if request["sweep"]:
            targets = [f"p{percentile}" for percentile in SWEEP_PERCENTILES]
            fixed = {name: f"p{value}" for name, value in request["qualities"].items()}
            qualities = sweep_qualities(fixed, request["sweep"], targets)
            labels = [f"{request['sweep']} p{percentile}" for percentile in SWEEP_PERCENTILES]
        elif "qualities" in request:
            qualities = [{name: f"p{value}" for name, value in request["qualities"].items()}]
            labels = [", ".join(f"{name} p{value}" for name, value in request["qualities"].items())]
        else:
            qualities, labels = None, ["reference"]
        batch_size = len(labels)
        job.total_steps = request["steps"]

        def on_step(pipe, step, timestep, tensors):
            job.step = step + 1
            return tensors

        results = generate(
            self.pipe,
            self.adapter,
            request["prompt"],
            qualities,
            negative_prompt=request["negative_prompt"],
            negative_quality=request["negative_quality"],
            scale=request["scale"],
            seed=request["seed"],
            steps=request["steps"],
            guidance=request["guidance"],
            batch_size=batch_size,
            references=[request["reference"]] if "reference" in request else None,
            progress=False,
            callback_on_step_end=on_step,
        )
        for result, label in zip(results, labels):
            buffer = io.BytesIO()
            result.image.save(buffer, format="PNG")
            job.images.append(buffer.getvalue())
            job.sidecars.append({**json.loads(json.dumps(result.settings, default=str)), "app": {"label": label}})
        job.labels = labels
