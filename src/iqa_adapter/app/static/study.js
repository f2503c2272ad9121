// The participant page: one pair at a time; each vote is stored before the next pair comes back. A vote that
// cannot reach the server is retried until it does (the server stores it once, whatever the retries).
const study = document.body.dataset.study;
const PARAMETERS = document.body.dataset.parameters.split(",");  // the server's PARTICIPANT_PARAMETERS
const params = new URLSearchParams(location.search);
let participant = null, source = "generated";
for (const name of PARAMETERS) {
  if (params.get(name)) { participant = params.get(name); source = name; break; }
}
if (!participant) {  // a generated id, kept in the URL so that a reload continues the same session
  participant = localStorage.getItem("iqa-study-" + study) ||
    (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2));
  localStorage.setItem("iqa-study-" + study, participant);
  params.set("participant", participant);
  history.replaceState(null, "", location.pathname + "?" + params.toString());
}
let current = null;
const IMAGE_RETRY = "an image did not load, retrying...";
const buttons = ["vote-left", "vote-same", "vote-right"].map((id) => document.getElementById(id));
const enable = (on) => buttons.forEach((button) => { button.disabled = !on; });

async function call(url, options) {
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await fetch(url, options);
      const body = await response.json();
      if (response.status >= 500) throw new Error(body.error || "server error");
      if (!response.ok) { document.getElementById("message").textContent = body.error; return null; }
      document.getElementById("message").textContent = "";
      return body;
    } catch (error) {  // the server is unreachable or restarting: wait and try again
      document.getElementById("message").textContent = "connection lost, retrying...";
      await new Promise((resolve) => setTimeout(resolve, Math.min(500 * (attempt + 1), 5000)));
    }
  }
}

function show(state) {
  current = state;
  if (!state) return;
  if (state.done) {
    document.getElementById("progress-text").textContent =
      "Thank you, you have finished." + (state.completion_code ? ` Your completion code: ${state.completion_code}` : "");
    document.querySelector(".pair").hidden = true;
    enable(false);
    return;
  }
  document.getElementById("progress-text").textContent = `Pair ${state.position + 1} of ${state.total}`;
  const left = document.getElementById("left"), right = document.getElementById("right");
  let loaded = 0;
  const ready = () => {
    if (++loaded < 2) return;
    const message = document.getElementById("message");
    if (message.textContent === IMAGE_RETRY) message.textContent = "";
    enable(true);
  };
  for (const [image, url] of [[left, state.left], [right, state.right]]) {
    let attempt = 0;
    image.onload = ready;
    image.onerror = () => {  // the server restarting, or a lost request: load the image again, not stay stuck
      if (current !== state) return;
      document.getElementById("message").textContent = IMAGE_RETRY;
      setTimeout(() => { if (current === state) image.src = `${url}?retry=${++attempt}`; },
                 Math.min(500 * (attempt + 1), 5000));
    };
    image.src = url;
  }
}

async function vote(choice) {
  if (!current || current.done) return;
  enable(false);
  show(await call(`/api/study/${encodeURIComponent(study)}/vote`, {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({participant, source, assignment: current.assignment, choice}),
  }));
}

buttons.forEach((button) => button.addEventListener("click", () => vote(button.dataset.choice)));
document.addEventListener("keydown", (event) => {
  const choice = {ArrowLeft: "left", ArrowRight: "right", ArrowDown: "same"}[event.key];
  if (choice && !buttons[0].disabled) vote(choice);
});
call(`/api/study/${encodeURIComponent(study)}/next?participant=${encodeURIComponent(participant)}&source=${source}`)
  .then(show);
