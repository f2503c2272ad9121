// The generate tab: sliders from /api/model, a job posted to /api/generate, its progress polled.
let model = null;
const $ = (id) => document.getElementById(id);

function tableRow(metric, percentile) {
  return metric.table.reduce((best, row) =>
    Math.abs(row.percentile - percentile) < Math.abs(best.percentile - percentile) ? row : best);
}

function showSlider(metric) {
  const input = $("q-" + metric.name);
  const row = tableRow(metric, Number(input.value));
  $("v-" + metric.name).textContent =
    `p${input.value}: z = ${row.z.toFixed(2)}, raw = ${row.raw.toPrecision(4)}` +
    (metric.higher_is_better ? "" : " (lower is better)");
}

async function loadModel() {
  const response = await fetch("/api/model");
  model = await response.json();
  $("model").textContent = `base ${model.base} | adapter ${model.adapter}` + (model.toy ? " (embedded toy world)" : "");
  for (const metric of model.metrics) {
    const box = document.createElement("div");
    box.innerHTML = `<label for="q-${metric.name}">${metric.name} percentile</label>
      <input type="range" id="q-${metric.name}" min="1" max="99" value="99">
      <div class="slider-values" id="v-${metric.name}"></div>`;
    $("quality").appendChild(box);
    $("q-" + metric.name).addEventListener("input", () => showSlider(metric));
    showSlider(metric);
    const option = document.createElement("option");
    option.value = metric.name; option.textContent = metric.name;
    $("sweep").appendChild(option);
  }
  $("reference-box").hidden = model.condition !== "reference";
  $("sweep").disabled = model.condition === "reference";
  $("scale").value = model.defaults.scale;
  $("steps").value = model.defaults.steps;
  $("guidance").value = model.defaults.guidance;
  const showScale = () => { $("scale-value").textContent = Number($("scale").value).toFixed(2); };
  $("scale").addEventListener("input", showScale); showScale();
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result); reader.onerror = reject;
    reader.readAsDataURL(file);
  });
}

async function request() {
  const body = {
    prompt: $("prompt").value, negative_prompt: $("negative_prompt").value,
    scale: Number($("scale").value), seed: Number($("seed").value), steps: Number($("steps").value),
    guidance: Number($("guidance").value), sweep: $("sweep").value || null,
    negative_quality: $("negative").checked ? Number($("negative_k").value) : null,
    qualities: Object.fromEntries(model.metrics.map((m) => [m.name, Number($("q-" + m.name).value)])),
  };
  if (model.condition === "reference") {
    const file = $("reference").files[0];
    body.reference = file ? await readFile(file) : null;
  }
  return body;
}

function showImages(job) {
  const results = $("results");
  results.innerHTML = "";
  results.classList.toggle("sweep", job.images.length > 1);  // a sweep: one row of labelled images
  job.images.forEach((image, index) => {
    const figure = document.createElement("figure");
    figure.innerHTML = `<img src="${image.url}" alt="${image.label}"><figcaption>${image.label}<br>
      <a href="${image.url}" download="iqa-adapter-${job.id}-${index}.png">PNG</a>
      <a href="${image.sidecar}" download="iqa-adapter-${job.id}-${index}.json">JSON</a></figcaption>`;
    results.appendChild(figure);
  });
}

async function generate() {
  $("status").className = ""; $("status").textContent = "queued";
  $("generate").disabled = true;
  const progress = $("progress"); progress.hidden = false; progress.value = 0;
  try {
    const response = await fetch("/api/generate", {method: "POST", headers: {"Content-Type": "application/json"},
                                                   body: JSON.stringify(await request())});
    let job = await response.json();
    if (!response.ok) throw new Error(job.error);
    while (job.state === "queued" || job.state === "running") {
      await new Promise((resolve) => setTimeout(resolve, 200));
      job = await (await fetch(`/api/jobs/${job.id}`)).json();
      progress.max = job.total_steps; progress.value = job.step;
      $("status").textContent = `${job.state}: step ${job.step} of ${job.total_steps}`;
    }
    if (job.state === "failed") throw new Error(job.error);
    $("status").textContent = `done in ${job.seconds} s`;
    showImages(job);
  } catch (error) {
    $("status").className = "error"; $("status").textContent = error.message;
  } finally {
    $("generate").disabled = false; progress.hidden = true;
  }
}

$("generate").addEventListener("click", generate);
loadModel();
