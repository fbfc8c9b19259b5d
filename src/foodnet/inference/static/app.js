// foodnet serve: choose, drop or paste a photo; POST it to /predict; draw the top 5 as bars.
"use strict";

const TOPK = 5;
const $ = (id) => document.getElementById(id);
let latest = 0;  // only the newest request may draw its answer

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

function field(list, label, value) {
  if (value === null || value === undefined || value === "") return;
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

function showCard(card) {
  const pre = card.preprocessing || {};
  const size = pre.image_size ? `${pre.image_size} x ${pre.image_size} px` : "unknown";
  $("model-line").textContent =
    `${card.name} \u00b7 ${card.arch} \u00b7 ${card.num_classes} classes`;
  const list = $("card-fields");
  list.replaceChildren();
  field(list, "Architecture", card.arch);
  field(list, "Classes", `${card.num_classes}`);
  field(list, "Image size", size);
  const best = card["val/acc_best"];
  field(list, "Best val accuracy",
        best === null || best === undefined ? "not recorded" : percent(best));
  if (card.trained_at) {
    const when = new Date(card.trained_at).toLocaleString();
    const epochs = card.epochs ? `, ${card.epochs} epoch${card.epochs === 1 ? "" : "s"}` : "";
    field(list, "Trained", `${when}${epochs}`);
  }
  if (card.train_manifest) field(list, "Trained on", card.train_manifest);
  if ("weights" in card) {
    field(list, "Started from", card.weights === null ? "random initialisation" : card.weights);
  }
  field(list, "Fine-tuning", card.finetune);
  field(list, "Model file", `${card.file} (${card.format})`);
  const classes = $("classes");
  classes.replaceChildren(...card.class_names.map((name) => {
    const li = document.createElement("li");
    li.textContent = name;
    return li;
  }));
}

function showPredictions(record) {
  const list = $("predictions");
  list.replaceChildren(...record.predictions.map((p) => {
    const li = document.createElement("li");
    li.className = "prediction";
    li.dataset.label = p.label;
    li.dataset.class = p.class;
    li.dataset.prob = p.prob;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = p.class;
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = percent(p.prob);
    const track = document.createElement("div");
    track.className = "track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * p.prob).toFixed(2)}%`;
    track.append(bar);
    li.append(name, prob, track);
    return li;
  }));
  const top = record.predictions[0];
  // Below the server's --min-confidence the model's answer is "unsure"; its guesses still show.
  const answer = record.unsure ? "unsure, perhaps" : "most likely";
  setStatus(`${record.path}: ${answer} ${top.class} (${percent(top.prob)})`);
  $("result").dataset.state = "done";
}

async function classify(blob, name) {
  const mine = ++latest;
  $("result").dataset.state = "busy";
  $("predictions").replaceChildren();
  $("again").hidden = true;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  preview.onerror = () => {  // not something the browser can show: offer the drop zone again
    preview.hidden = true;
    $("hint").hidden = false;
  };
  $("hint").hidden = true;
  setStatus(`Classifying ${name}\u2026`);

  const form = new FormData();
  form.append("file", blob, name);
  form.append("topk", String(TOPK));
  let answer, body;
  try {
    answer = await fetch("predict", { method: "POST", body: form });
    body = await answer.json();
  } catch (err) {
    if (mine === latest) setStatus(`The server did not answer (${err}).`, true);
    return;
  }
  if (mine !== latest) return;
  $("again").hidden = false;
  const record = Array.isArray(body) ? body[0] : null;
  if (!answer.ok || !record || record.error) {
    setStatus((record && record.error) || body.error || `HTTP ${answer.status}`, true);
    $("result").dataset.state = "error";
    return;
  }
  showPredictions(record);
}

function firstImage(files) {
  return Array.from(files || []).find((f) => f.type.startsWith("image/")) || (files || [])[0];
}

function setUp() {
  fetch("info").then((r) => r.json()).then(showCard).catch((err) => {
    $("model-line").textContent = `model card unavailable (${err})`;
  });
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) classify(file, file.name);
    event.target.value = "";  // choosing the same file again fires change again
  });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    const file = firstImage(event.dataTransfer.files);
    if (file) classify(file, file.name);
  });
  document.addEventListener("paste", (event) => {
    const items = Array.from(event.clipboardData ? event.clipboardData.items : []);
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (!item) return;
    event.preventDefault();
    const file = item.getAsFile();
    classify(file, file.name && file.name !== "image.png" ? file.name : "pasted-image.png");
  });
}

setUp();
